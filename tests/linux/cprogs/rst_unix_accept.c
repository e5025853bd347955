/* Unix stream connections accepted from listeners of the tree: the parent listens on a
 * relative path and on an abstract name, the child connects to both (to the path from a
 * socket bound to an abstract name of its own), the parent accepts; bytes are queued both
 * ways on both connections. After the restore each accepted end still shows its
 * listener's name and its peer's, the queues read back, they talk on, and both listeners
 * accept a new connection. */
#include "check.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t addr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path + abstract, name);
	return offsetof(struct sockaddr_un, sun_path) + abstract + strlen(name) + !abstract;
}

static void expect(int fd, const char *want, const char *what)
{
	char buf[64] = { 0 };
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	CHECK(n == (ssize_t)strlen(want) && !memcmp(buf, want, n), "%s: read %zd '%s', want '%s'",
	      what, n, buf, want);
}

static int same_name(int fd, int peer, const struct sockaddr_un *want, socklen_t wlen)
{
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	if ((peer ? getpeername(fd, (void *)&a, &l) : getsockname(fd, (void *)&a, &l)) != 0)
		return 0;
	return l == wlen && !memcmp(&a, want, wlen);
}

int main(void)
{
	catch_usr1();
	char abs_srv[64], abs_cli[64];
	snprintf(abs_srv, sizeof(abs_srv), "rst-accept-srv-%d", getpid());
	snprintf(abs_cli, sizeof(abs_cli), "rst-accept-cli-%d", getpid());
	struct sockaddr_un ps, as, ac;
	socklen_t pslen = addr(&ps, "srv.sock", 0), aslen = addr(&as, abs_srv, 1);
	socklen_t aclen = addr(&ac, abs_cli, 1);
	unlink("srv.sock");
	int lp = socket(AF_UNIX, SOCK_STREAM, 0), la = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(bind(lp, (void *)&ps, pslen) == 0 && listen(lp, 4) == 0, "path listener");
	CHECK(bind(la, (void *)&as, aslen) == 0 && listen(la, 4) == 0, "abstract listener");
	int sync[2];
	CHECK(pipe(sync) == 0, "pipe");
	pid_t c = fork_started();
	if (c == 0) {
		int cp = socket(AF_UNIX, SOCK_STREAM, 0), ca = socket(AF_UNIX, SOCK_STREAM, 0);
		CHECK(bind(cp, (void *)&ac, aclen) == 0, "client bind");
		CHECK(connect(cp, (void *)&ps, pslen) == 0, "connect path: %s", strerror(errno));
		CHECK(connect(ca, (void *)&as, aslen) == 0, "connect abstract");
		CHECK(write(cp, "to path server", 14) == 14 && write(ca, "to abs server", 13) == 13,
		      "client writes");
		CHECK(write(sync[1], "s", 1) == 1, "sync");
		wait_usr1();
		expect(cp, "from path server", "child path queue");
		expect(ca, "from abs server", "child abstract queue");
		CHECK(same_name(cp, 0, &ac, aclen), "client lost its own name");
		CHECK(same_name(cp, 1, &ps, pslen), "client's peer name");
		CHECK(write(cp, "later", 5) == 5, "later");
		_exit(fails ? 1 : 0);
	}
	char s;
	CHECK(read(sync[0], &s, 1) == 1, "child never connected");
	int xp = accept(lp, NULL, NULL), xa = accept(la, NULL, NULL);
	CHECK(xp >= 0 && xa >= 0, "accept");
	CHECK(write(xp, "from path server", 16) == 16 && write(xa, "from abs server", 15) == 15,
	      "server writes");
	say("READY");
	wait_usr1();
	expect(xp, "to path server", "parent path queue");
	expect(xa, "to abs server", "parent abstract queue");
	CHECK(same_name(xp, 0, &ps, pslen), "accepted end lost the listener's path");
	CHECK(same_name(xa, 0, &as, aslen), "accepted end lost the listener's abstract name");
	CHECK(same_name(xp, 1, &ac, aclen), "accepted end's peer is not the client's name");
	kill(c, SIGUSR1);
	expect(xp, "later", "child's write after the restore");
	int n1 = socket(AF_UNIX, SOCK_STREAM, 0), n2 = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(connect(n1, (void *)&ps, pslen) == 0 && accept(lp, NULL, NULL) >= 0, "path again");
	CHECK(connect(n2, (void *)&as, aslen) == 0 && accept(la, NULL, NULL) >= 0, "abs again");
	check_child(c, 0);
	return finish();
}
