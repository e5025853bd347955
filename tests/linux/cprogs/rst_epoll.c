/* epoll sets with their targets: one epoll watches a pipe holding bytes, a socket (moved to
 * fd 60 before it was added) with bytes queued, an eventfd (count 7, EFD_NONBLOCK) and an
 * empty pipe edge-triggered, each with its own data; a second epoll watches the first.
 * After the restore the first reports exactly the three ready targets with their data,
 * the second reports the first, EPOLL_CTL_MOD and DEL work on the task's own fd numbers,
 * the empty pipe is reported once written, and the eventfd still counts 7. */
#include "check.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

static int add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

int main(void)
{
	catch_usr1();
	int p[2], q[2], s[2];
	CHECK(pipe(p) == 0 && pipe(q) == 0, "pipes");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0, "socketpair");
	CHECK(dup2(s[1], 60) == 60, "dup2");
	close(s[1]);
	int efd = eventfd(7, EFD_NONBLOCK | EFD_CLOEXEC);
	CHECK(write(p[1], "pipe", 4) == 4 && write(s[0], "sock", 4) == 4, "writes");
	int ep = epoll_create1(0), ep2 = epoll_create1(EPOLL_CLOEXEC);
	CHECK(add(ep, p[0], EPOLLIN, 0xabc) == 0, "add pipe");
	CHECK(add(ep, 60, EPOLLIN | EPOLLRDHUP, 0xdef) == 0, "add socket");
	CHECK(add(ep, efd, EPOLLIN, 0x77) == 0, "add eventfd");
	CHECK(add(ep, q[0], EPOLLIN | EPOLLET, 0x99) == 0, "add empty pipe");
	CHECK(add(ep2, ep, EPOLLIN, 5) == 0, "add epoll");
	say("READY");
	wait_usr1();
	struct epoll_event got[8];
	CHECK(epoll_wait(ep2, got, 8, 1000) == 1 && got[0].data.u64 == 5, "nested epoll");
	int n = epoll_wait(ep, got, 8, 1000);
	uint64_t seen = 0;
	for (int i = 0; i < n; i++) {
		CHECK(got[i].events & EPOLLIN, "target %#lx: events %#x",
		      (unsigned long)got[i].data.u64, got[i].events);
		seen |= got[i].data.u64 == 0xabc ? 1 : got[i].data.u64 == 0xdef ? 2 :
			got[i].data.u64 == 0x77 ? 4 : 8;
	}
	CHECK(n == 3 && seen == 7, "%d events ready (mask %#lx), want the pipe, socket, eventfd",
	      n, (unsigned long)seen);
	struct epoll_event mod = { .events = EPOLLIN, .data.u64 = 0x600 };
	CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, 60, &mod) == 0, "MOD fd 60: %s", strerror(errno));
	CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL) == 0, "DEL pipe: %s", strerror(errno));
	CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, efd, NULL) == 0, "DEL eventfd: %s", strerror(errno));
	n = epoll_wait(ep, got, 8, 1000);
	CHECK(n == 1 && got[0].data.u64 == 0x600, "after MOD: %d events, data %#lx", n,
	      n > 0 ? (unsigned long)got[0].data.u64 : 0ul);
	char buf[8];
	CHECK(read(60, buf, 8) == 4 && !memcmp(buf, "sock", 4), "socket data");
	CHECK(read(p[0], buf, 8) == 4 && !memcmp(buf, "pipe", 4), "pipe data");
	CHECK(epoll_wait(ep, got, 8, 0) == 0, "still ready after reading");
	CHECK(write(q[1], "q", 1) == 1, "write q");
	n = epoll_wait(ep, got, 8, 1000);
	CHECK(n == 1 && got[0].data.u64 == 0x99, "empty pipe not reported once written");
	CHECK(epoll_wait(ep, got, 8, 0) == 0, "EPOLLET lost: reported twice");
	uint64_t count = 0;
	CHECK(read(efd, &count, 8) == 8 && count == 7, "eventfd count %lu, want 7",
	      (unsigned long)count);
	CHECK(read(efd, &count, 8) == -1 && errno == EAGAIN, "eventfd lost EFD_NONBLOCK");
	CHECK(fcntl(efd, F_GETFD) & FD_CLOEXEC, "eventfd lost FD_CLOEXEC");
	CHECK(!(fcntl(ep, F_GETFD) & FD_CLOEXEC) && (fcntl(ep2, F_GETFD) & FD_CLOEXEC),
	      "epoll FD_CLOEXEC flags");
	return finish();
}
