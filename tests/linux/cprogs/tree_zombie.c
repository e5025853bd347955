/* A three-level tree (root -> A -> B) with a zombie child Z of the root (exit code 7, not
 * waited for). SIGUSR1 to the root goes down the tree; each task checks its memory and its
 * parent, the root reaps Z and checks its exit code. */
#include "check.h"

static int level_main(int depth, int ready_fd)
{
	size_t sz = 256 << 10;
	char *mem = malloc(sz);
	fill(mem, sz, 20 + depth);
	pid_t parent = getppid(), child = 0;
	if (depth < 2) {
		fflush(stdout);
		child = fork();
		if (child == 0)
			_exit(level_main(depth + 1, ready_fd));
	}
	char c = 'r';
	CHECK(write(ready_fd, &c, 1) == 1, "ready write");
	close(ready_fd);
	wait_usr1();
	if (child) {
		kill(child, SIGUSR1);
		check_child(child, 0);
	}
	CHECK(getppid() == parent, "ppid %d, want %d", getppid(), parent);
	CHECK(!bad_words(mem, sz, 20 + depth), "memory of level %d", depth);
	return fails ? 1 : 0;
}

int main(void)
{
	catch_usr1();
	int p[2];
	pipe(p);
	fflush(stdout);
	pid_t z = fork();
	if (z == 0)
		_exit(7);
	pid_t a = fork();
	if (a == 0) {
		close(p[0]);
		_exit(level_main(1, p[1]));
	}
	close(p[1]);
	char got[2];
	CHECK(read(p[0], got, 1) == 1 && read(p[0], got + 1, 1) == 1, "children not ready");
	close(p[0]);
	siginfo_t si;
	waitid(P_PID, z, &si, WEXITED | WNOWAIT); /* Z is a zombie now, still unreaped */
	say("READY");
	wait_usr1();
	kill(a, SIGUSR1);
	check_child(a, 0);
	check_child(z, 7);
	return finish();
}
