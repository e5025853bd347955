/* An eventfd holding a count and an epoll set watching it and a pipe, each target with its
 * own events and data: after the restore epoll reports the eventfd ready (its count kept)
 * and then the pipe once written. */
#include "check.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

int main(void)
{
	catch_usr1();
	int efd = eventfd(5, EFD_NONBLOCK);
	int p[2];
	pipe(p);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1234 };
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
	ev = (struct epoll_event){ .events = EPOLLIN | EPOLLET, .data.u64 = 77 };
	epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
	say("READY");
	wait_usr1();
	struct epoll_event got[4];
	int n = epoll_wait(ep, got, 4, 1000);
	CHECK(n == 1 && got[0].data.u64 == 0x1234, "epoll_wait: %d events, data %#lx", n,
	      n > 0 ? (unsigned long)got[0].data.u64 : 0ul);
	uint64_t count = 0;
	CHECK(read(efd, &count, 8) == 8 && count == 5, "eventfd count %lu, want 5",
	      (unsigned long)count);
	CHECK(read(efd, &count, 8) == -1 && errno == EAGAIN, "eventfd lost EFD_NONBLOCK");
	CHECK(write(p[1], "x", 1) == 1, "pipe write");
	n = epoll_wait(ep, got, 4, 1000);
	CHECK(n == 1 && got[0].data.u64 == 77 && (got[0].events & EPOLLIN), "pipe not reported");
	CHECK(fcntl(ep, F_GETFD) & FD_CLOEXEC, "epoll fd lost FD_CLOEXEC");
	return finish();
}
