/* A listening unix stream socket bound to a path (mode 0640) and one with an abstract
 * name: after the restore both accept a connection and pass data. */
#include "check.h"
#include <sys/socket.h>
#include <sys/stat.h>
#include <stddef.h>
#include <sys/un.h>

static socklen_t address(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path + abstract, name);
	return offsetof(struct sockaddr_un, sun_path) + abstract + strlen(name) + !abstract;
}

static int listener(const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t len = address(&a, name, abstract);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(bind(s, (void *)&a, len) == 0, "bind %s: %s", name, strerror(errno));
	CHECK(listen(s, 9) == 0, "listen");
	return s;
}

static void check_accepts(int s, const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t len = address(&a, name, abstract);
	int c = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(c, (void *)&a, len) == 0, "connect %s: %s", name, strerror(errno));
	int x = accept(s, NULL, NULL);
	CHECK(x >= 0, "accept %s: %s", name, strerror(errno));
	CHECK(write(c, "hi", 2) == 2, "write");
	char buf[2];
	CHECK(x >= 0 && read(x, buf, 2) == 2 && !memcmp(buf, "hi", 2), "data on %s", name);
	close(c);
	close(x);
}

int main(void)
{
	catch_usr1();
	char abstract[64];
	snprintf(abstract, sizeof(abstract), "dumper-test-%d", getpid());
	unlink("listen.sock");
	int s = listener("listen.sock", 0), t = listener(abstract, 1);
	chmod("listen.sock", 0640);
	say("READY");
	wait_usr1();
	check_accepts(s, "listen.sock", 0);
	check_accepts(t, abstract, 1);
	struct stat st;
	CHECK(stat("listen.sock", &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 0777) == 0640,
	      "socket file mode %o", st.st_mode);
	return finish();
}
