/* The program rst_exec_parent's child execs (and a shell job runs): its own memory and
 * FP state, checked with its address space (rst_exec.h) after a restore, on SIGUSR1.
 *   rst_exec_child FD alone|fork  - writes one byte to FD once set up ("fork": first forks
 *                                   a grandchild that inherits its layout and checks too)
 *   rst_exec_child -              - prints READY itself (a shell's background job) */
#include "rst_exec.h"

int main(int argc, char **argv)
{
	struct self me;
	catch_usr1();
	size_t sz = 3 << 20;
	char *mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(mem, sz, 41);
	volatile double acc = 0;
	for (int i = 1; i <= 1000; i++)
		acc += 1.0 / i;
	self_record(&me);
	pid_t g = 0;
	if (argc > 2 && !strcmp(argv[2], "fork")) {
		g = fork_started();
		if (g == 0) {  /* the grandchild: the exec'd layout, by fork */
			struct self gs;
			self_record(&gs);
			fill(mem, 4096, 42);
			wait_usr1();
			CHECK(!bad_words(mem, 4096, 42), "grandchild: its page");
			size_t bad = 0;  /* the rest is still the page its parent shares */
			for (size_t i = 512; i < sz / 8; i++)
				bad += ((uint64_t *)mem)[i] != pattern(41, i);
			CHECK(!bad, "grandchild: %zu bad words", bad);
			self_check(&gs, "grandchild");
			_exit(fails ? 1 : 0);
		}
	}
	if (argc > 1 && strcmp(argv[1], "-")) {
		int fd = atoi(argv[1]);
		CHECK(write(fd, "r", 1) == 1, "ready write");
		close(fd);
	} else {
		say("READY");
	}
	wait_usr1();
	if (g) {
		kill(g, SIGUSR1);
		check_child(g, 0);
	}
	CHECK(!bad_words(mem, sz, 41), "child: %zu bad words", bad_words(mem, sz, 41));
	double want = 0;
	for (int i = 1; i <= 1000; i++)
		want += 1.0 / i;
	CHECK(acc == want, "child: FP accumulator %.17g, want %.17g", acc, want);
	self_check(&me, "child");
	return finish();
}
