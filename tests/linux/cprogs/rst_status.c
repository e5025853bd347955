/* Ends by a signal: after SIGUSR1 it prints PASS and kills itself with SIGTERM (default
 * action), so a caller waiting for it sees a status of 128+15 -- through the init of a
 * --pidns restore too. */
#include "check.h"

int main(void)
{
	pid_t me = getpid();
	say("READY");
	catch_usr1();
	wait_usr1();
	CHECK(getpid() == me, "pid %d, want %d", getpid(), me);
	finish();
	signal(SIGTERM, SIG_DFL);
	raise(SIGTERM);
	return 3;
}
