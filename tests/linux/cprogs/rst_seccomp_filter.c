/* A seccomp filter (mode 2, allowing everything) under no_new_privs: the images record the
 * mode, not the filter, so a restore must refuse it. */
#include "check.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

int main(void)
{
	struct sock_filter allow[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
	struct sock_fprog prog = { .len = 1, .filter = allow };
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
	CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0, "filter: %s",
	      strerror(errno));
	say("READY");
	catch_usr1();
	wait_usr1();
	return finish();
}
