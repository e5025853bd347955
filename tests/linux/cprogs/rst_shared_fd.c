/* Open file descriptions shared across the tree (inherited over fork): a TCP listener and an
 * eventfd held by parent and child, plus two more eventfds of the parent's own (every
 * eventfd is on the one anon inode: only the description tells them apart). After the
 * restore the child's O_NONBLOCK on the listener shows in the parent, its eventfd writes
 * reach the parent, the child accepts a connection on the shared listener, and each
 * eventfd of the parent kept its own count. */
#include "check.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

int main(void)
{
	catch_usr1();
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof(a);
	CHECK(bind(l, (void *)&a, alen) == 0 && listen(l, 4) == 0, "listen");
	getsockname(l, (void *)&a, &alen);
	int shared = eventfd(0, 0), e1 = eventfd(11, 0), e2 = eventfd(22, EFD_NONBLOCK);
	int ready[2], done[2];
	CHECK(pipe(ready) == 0 && pipe(done) == 0, "pipes");
	pid_t c = fork_started();
	if (c == 0) {
		close(e1);
		close(e2);
		wait_usr1();
		fcntl(l, F_SETFL, O_NONBLOCK);
		uint64_t one = 1;
		CHECK(write(shared, &one, 8) == 8, "child eventfd write");
		char r;
		CHECK(read(ready[0], &r, 1) == 1, "parent never connected");
		int x = accept(l, NULL, NULL);
		CHECK(x >= 0, "child accept on the shared listener: %s", strerror(errno));
		CHECK(write(done[1], "d", 1) == 1, "done");
		_exit(fails ? 1 : 0);
	}
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	uint64_t v = 0;
	CHECK(read(shared, &v, 8) == 8 && v == 1, "shared eventfd: %lu", (unsigned long)v);
	CHECK(fcntl(l, F_GETFL) & O_NONBLOCK, "the child's O_NONBLOCK is not on the parent's "
	      "listener: two descriptions");
	int s = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(s, (void *)&a, alen) == 0, "connect: %s", strerror(errno));
	CHECK(write(ready[1], "r", 1) == 1, "ready");
	char d;
	CHECK(read(done[0], &d, 1) == 1, "child never accepted");
	CHECK(read(e1, &v, 8) == 8 && v == 11, "e1 count %lu", (unsigned long)v);
	CHECK(read(e2, &v, 8) == 8 && v == 22, "e2 count %lu", (unsigned long)v);
	CHECK(read(e2, &v, 8) == -1 && errno == EAGAIN, "e2 lost EFD_NONBLOCK");
	check_child(c, 0);
	return finish();
}
