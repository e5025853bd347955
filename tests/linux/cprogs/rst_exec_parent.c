/* A parent that forks a child which execs another self-checking program (rst_exec_child,
 * next to this one): after a restore both check their memory and their own address space
 * (rst_exec.h). Built with -DMIDDLE, the exec'd child forks a grandchild of its own (a
 * three-level tree whose middle task exec'd). */
#include "rst_exec.h"
#include <libgen.h>

#ifdef MIDDLE
#define MODE "fork"
#else
#define MODE "alone"
#endif

int main(void)
{
	struct self me;
	/* The tasks' stdout is one open file; a restore reopens it per task (at one offset
	 * each): appending, no task's lines overwrite another's. */
	fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_APPEND);
	catch_usr1();
	size_t sz = 2 << 20;
	char *mem = malloc(sz);
	fill(mem, sz, 40);
	self_record(&me);
	char child[4096 + 32], dir[4096];
	strcpy(dir, me.exe);
	snprintf(child, sizeof child, "%s/rst_exec_child", dirname(dir));
	int p[2];
	CHECK(pipe(p) == 0, "pipe");
	fflush(stdout);
	pid_t c = fork();
	if (c == 0) {
		char fd[16];
		close(p[0]);
		snprintf(fd, sizeof fd, "%d", p[1]);
		execl(child, child, fd, MODE, (char *)NULL);
		printf("FAIL exec %s: %s\n", child, strerror(errno));
		_exit(127);
	}
	close(p[1]);
	char r;
	CHECK(read(p[0], &r, 1) == 1, "child %d never got ready", c);
	close(p[0]);
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	CHECK(!bad_words(mem, sz, 40), "parent: %zu bad words", bad_words(mem, sz, 40));
	self_check(&me, "parent");
	return finish();
}
