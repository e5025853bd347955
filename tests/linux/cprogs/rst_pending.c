/* Signals queued at the dump stay queued: SIGUSR2 blocked and pending for the process and
 * SIGRTMIN+1 queued twice with values (a real-time signal keeps every instance), all
 * blocked while we wait for SIGUSR1. */
#include "check.h"

int main(void)
{
	catch_usr1();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	sigaddset(&set, SIGRTMIN + 1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	kill(getpid(), SIGUSR2);
	union sigval v = { .sival_int = 41 };
	sigqueue(getpid(), SIGRTMIN + 1, v);
	v.sival_int = 42;
	sigqueue(getpid(), SIGRTMIN + 1, v);
	say("READY");
	while (!got_usr1)
		sigsuspend(&set); /* not check.h's wait_usr1: it would unblock them */
	sigset_t pend;
	sigpending(&pend);
	CHECK(sigismember(&pend, SIGUSR2), "SIGUSR2 is no longer pending");
	struct timespec zero = { 0, 0 };
	siginfo_t si;
	CHECK(sigtimedwait(&set, &si, &zero) == SIGUSR2, "SIGUSR2 not taken first");
	CHECK(sigtimedwait(&set, &si, &zero) == SIGRTMIN + 1 && si.si_value.sival_int == 41,
	      "first SIGRTMIN+1 lost (%d)", si.si_value.sival_int);
	CHECK(sigtimedwait(&set, &si, &zero) == SIGRTMIN + 1 && si.si_value.sival_int == 42,
	      "second SIGRTMIN+1 lost (%d)", si.si_value.sival_int);
	CHECK(sigtimedwait(&set, &si, &zero) < 0, "more signals pending than were queued");
	return finish();
}
