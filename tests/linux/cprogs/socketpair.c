/* Connected unix sockets across the tree: a stream socketpair with bytes queued for the
 * child, and a datagram socketpair with two datagrams queued: after the restore the child
 * reads them as they were (the datagrams apart), then they talk both ways. */
#include "check.h"
#include <sys/socket.h>

int main(void)
{
	catch_usr1();
	int st[2], dg[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0, "socketpair stream");
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0, "socketpair dgram");
	CHECK(write(st[0], "queued bytes", 12) == 12, "stream write");
	CHECK(write(dg[0], "one", 3) == 3 && write(dg[0], "second", 6) == 6, "dgram writes");
	pid_t c = fork_started();
	if (c == 0) {
		close(st[0]);
		close(dg[0]);
		wait_usr1();
		char buf[64] = { 0 };
		CHECK(read(st[1], buf, 12) == 12 && !memcmp(buf, "queued bytes", 12),
		      "stream queue: '%s'", buf);
		CHECK(read(dg[1], buf, sizeof(buf)) == 3 && !memcmp(buf, "one", 3), "datagram 1");
		CHECK(read(dg[1], buf, sizeof(buf)) == 6 && !memcmp(buf, "second", 6), "datagram 2");
		CHECK(read(st[1], buf, 4) == 4 && !memcmp(buf, "ping", 4), "ping");
		CHECK(write(st[1], "pong", 4) == 4, "pong");
		_exit(fails ? 1 : 0);
	}
	close(st[1]);
	close(dg[1]);
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	CHECK(write(st[0], "ping", 4) == 4, "ping write");
	char buf[4];
	CHECK(read(st[0], buf, 4) == 4 && !memcmp(buf, "pong", 4), "no pong");
	check_child(c, 0);
	return finish();
}
