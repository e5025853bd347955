/* A signalfd taking SIGUSR2 (blocked) and a periodic timerfd: after the restore the
 * signalfd still takes SIGUSR2, and the timer keeps firing at its interval. */
#include "check.h"
#include <sys/signalfd.h>
#include <sys/timerfd.h>

int main(void)
{
	catch_usr1();
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr2, NULL);
	int sfd = signalfd(-1, &usr2, SFD_NONBLOCK | SFD_CLOEXEC);
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = { .it_value = { 0, 50000000 }, .it_interval = { 0, 50000000 } };
	timerfd_settime(tfd, 0, &its, NULL);
	say("READY");
	wait_usr1();
	kill(getpid(), SIGUSR2);
	struct signalfd_siginfo si;
	CHECK(read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR2,
	      "signalfd does not take SIGUSR2");
	uint64_t ticks = 0;
	CHECK(read(tfd, &ticks, 8) == 8 && ticks >= 1, "timerfd gave %lu ticks",
	      (unsigned long)ticks);
	struct itimerspec cur;
	timerfd_gettime(tfd, &cur);
	CHECK(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == 50000000,
	      "interval %ld.%09ld", (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
	CHECK(fcntl(sfd, F_GETFL) & O_NONBLOCK, "signalfd lost O_NONBLOCK");
	return finish();
}
