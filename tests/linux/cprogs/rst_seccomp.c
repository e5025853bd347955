/* Seccomp strict mode: a child enters it and blocks in read() on a pipe (read, write,
 * exit and sigreturn are all it may call). After SIGUSR1 the parent sees Seccomp 1 in the
 * child's status, wakes it; the child answers, then makes a forbidden call (getppid) and
 * must die of SIGKILL -- a child whose strict mode was lost exits 0 instead. */
#include "check.h"
#include <linux/seccomp.h>
#include <sys/prctl.h>

int main(void)
{
	int go[2], back[2];
	CHECK(pipe(go) == 0 && pipe(back) == 0, "pipe");
	pid_t c = fork_started();
	if (c == 0) {
		char b;
		close(go[1]);
		close(back[0]);
		if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
			_exit(3);
		syscall(SYS_write, back[1], "s", 1);
		if (syscall(SYS_read, go[0], &b, 1) == 1)
			syscall(SYS_write, back[1], "a", 1);
		syscall(SYS_getppid);
		syscall(SYS_exit, 0); /* not exit_group: strict mode allows only exit */
	}
	close(go[0]);
	close(back[1]);
	char b = 0;
	CHECK(read(back[0], &b, 1) == 1 && b == 's', "the child did not enter strict mode");
	say("READY");
	catch_usr1();
	wait_usr1();
	char path[64], line[256];
	int mode = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", c);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "Seccomp:", 8))
			mode = atoi(line + 8);
	if (f)
		fclose(f);
	CHECK(mode == 1, "child's Seccomp %d, want 1", mode);
	CHECK(write(go[1], "g", 1) == 1, "wake the child");
	CHECK(read(back[0], &b, 1) == 1 && b == 'a', "the child did not answer");
	int status = 0;
	CHECK(waitpid(c, &status, 0) == c, "waitpid");
	CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
	      "child status %#x: a forbidden call did not kill it", status);
	return finish();
}
