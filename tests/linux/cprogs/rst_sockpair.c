/* Unix sockets with data queued at the dump, every direction: a stream socketpair across
 * parent and child with bytes queued for each side, a datagram socketpair across them with
 * two datagrams each way, a stream pair inside the parent (one end O_NONBLOCK, the other
 * FD_CLOEXEC at fd 40 with a set SO_SNDBUF), a pair one end of which shut down its writing
 * after its last bytes, a datagram "server" bound to an abstract name holding a datagram,
 * with a client connected to it, and one bound to a relative path (from the program's own
 * directory, mode 0600). After the restore everything reads back as it was, in order, and
 * they talk on; a new socket reaches the path one by its relative name. */
#include "check.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static socklen_t abstract(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strcpy(a->sun_path + 1, name);
	return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
}

static void expect(int fd, const char *want, const char *what)
{
	char buf[64] = { 0 };
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	CHECK(n == (ssize_t)strlen(want) && !memcmp(buf, want, n), "%s: read %zd '%s', want '%s'",
	      what, n, buf, want);
}

int main(void)
{
	catch_usr1();
	int st[2], dg[2], in[2], sh[2], sync[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0, "socketpair stream");
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0, "socketpair dgram");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, in) == 0, "socketpair inner");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sh) == 0, "socketpair shutdown");
	CHECK(pipe(sync) == 0, "pipe");
	CHECK(write(st[0], "parent to child", 15) == 15, "st write");
	CHECK(write(dg[0], "p1", 2) == 2 && write(dg[0], "p-two", 5) == 5, "dg writes");
	pid_t c = fork_started();
	if (c == 0) {
		close(st[0]);
		close(dg[0]);
		close(sync[0]);
		CHECK(write(st[1], "child to parent!", 16) == 16, "child st write");
		CHECK(write(dg[1], "c1", 2) == 2 && write(dg[1], "c-two", 5) == 5, "child dg");
		CHECK(write(sync[1], "s", 1) == 1, "sync");
		wait_usr1();
		expect(st[1], "parent to child", "child stream queue");
		expect(dg[1], "p1", "child datagram 1");
		expect(dg[1], "p-two", "child datagram 2");
		CHECK(write(st[1], "after", 5) == 5, "child write after");
		_exit(fails ? 1 : 0);
	}
	close(st[1]);
	close(dg[1]);
	char s;
	CHECK(read(sync[0], &s, 1) == 1, "child never wrote");
	/* inside the parent: both directions, flags and options */
	CHECK(write(in[0], "zero to one", 11) == 11 && write(in[1], "one to zero", 11) == 11, "in");
	int sndbuf = 65536, got = 0;
	socklen_t len = sizeof(got);
	setsockopt(in[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	getsockopt(in[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &len);
	CHECK(dup3(in[0], 40, O_CLOEXEC) == 40, "dup3");
	close(in[0]);
	fcntl(in[1], F_SETFL, O_NONBLOCK);
	/* the last bytes, then no more writing */
	CHECK(write(sh[0], "last words", 10) == 10, "sh write");
	shutdown(sh[0], SHUT_WR);
	/* a bound datagram socket with a datagram from an unbound sender, and a client */
	char name[64];
	snprintf(name, sizeof(name), "rst-sockpair-%d", getpid());
	struct sockaddr_un a;
	socklen_t alen = abstract(&a, name);
	int srv = socket(AF_UNIX, SOCK_DGRAM, 0), snd = socket(AF_UNIX, SOCK_DGRAM, 0);
	int cli = socket(AF_UNIX, SOCK_DGRAM, 0);
	CHECK(bind(srv, (void *)&a, alen) == 0, "bind %s: %s", name, strerror(errno));
	CHECK(sendto(snd, "hello server", 12, 0, (void *)&a, alen) == 12, "sendto");
	close(snd);
	CHECK(connect(cli, (void *)&a, alen) == 0, "connect");
	struct sockaddr_un pa = { .sun_family = AF_UNIX, .sun_path = "dg.sock" };
	socklen_t palen = offsetof(struct sockaddr_un, sun_path) + 8;
	unlink("dg.sock");
	int psrv = socket(AF_UNIX, SOCK_DGRAM, 0), pcli = socket(AF_UNIX, SOCK_DGRAM, 0);
	CHECK(bind(psrv, (void *)&pa, palen) == 0, "bind dg.sock: %s", strerror(errno));
	chmod("dg.sock", 0600);
	CHECK(connect(pcli, (void *)&pa, palen) == 0 && send(pcli, "early", 5, 0) == 5, "pcli");
	say("READY");
	wait_usr1();
	expect(st[0], "child to parent!", "parent stream queue");
	expect(dg[0], "c1", "parent datagram 1");
	expect(dg[0], "c-two", "parent datagram 2");
	kill(c, SIGUSR1); /* after the reads: its next write would join the stream queue */
	expect(40, "one to zero", "inner queue at 40");
	expect(in[1], "zero to one", "inner queue at 1");
	char buf[8];
	CHECK(read(in[1], buf, 8) == -1 && errno == EAGAIN, "O_NONBLOCK lost on the inner end");
	CHECK(fcntl(40, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC lost on fd 40");
	CHECK(!(fcntl(in[1], F_GETFD) & FD_CLOEXEC), "FD_CLOEXEC appeared on fd %d", in[1]);
	getsockopt(40, SOL_SOCKET, SO_SNDBUF, &got, &len);
	CHECK(got == sndbuf, "SO_SNDBUF %d, want %d", got, sndbuf);
	CHECK(write(40, "ping", 4) == 4, "write 40");
	expect(in[1], "ping", "inner after restore");
	expect(sh[1], "last words", "shut-down pair's last bytes");
	CHECK(read(sh[1], buf, 8) == 0, "no EOF after the peer's shutdown");
	CHECK(write(sh[1], "back", 4) == 4, "write back to the shut-down end");
	expect(sh[0], "back", "shut-down end still reads");
	struct sockaddr_un from;
	socklen_t flen = sizeof(from);
	char msg[64] = { 0 };
	CHECK(recvfrom(srv, msg, sizeof(msg), 0, (void *)&from, &flen) == 12 &&
	      !memcmp(msg, "hello server", 12), "server's queued datagram: '%s'", msg);
	CHECK(send(cli, "from client", 11, 0) == 11, "client send: %s", strerror(errno));
	expect(srv, "from client", "client to server");
	struct sockaddr_un me;
	socklen_t mlen = sizeof(me);
	getsockname(srv, (void *)&me, &mlen);
	CHECK(mlen == alen && !memcmp(&me, &a, alen), "server name changed");
	expect(psrv, "early", "path server's queued datagram");
	CHECK(send(pcli, "late", 4, 0) == 4, "pcli send after: %s", strerror(errno));
	expect(psrv, "late", "path client to server");
	int fresh = socket(AF_UNIX, SOCK_DGRAM, 0);
	CHECK(sendto(fresh, "fresh", 5, 0, (void *)&pa, palen) == 5,
	      "a new socket cannot reach dg.sock: %s", strerror(errno));
	expect(psrv, "fresh", "new socket to the path server");
	struct stat sb;
	CHECK(stat("dg.sock", &sb) == 0 && (sb.st_mode & 0777) == 0600, "dg.sock mode %o",
	      sb.st_mode);
	expect(st[0], "after", "child's write after the restore");
	check_child(c, 0);
	return finish();
}
