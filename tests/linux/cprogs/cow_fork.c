/* Private memory shared copy-on-write after fork: both tasks read it back after the
 * restore, and a write in the child stays the child's. */
#include "check.h"

int main(void)
{
	catch_usr1();
	size_t sz = 8 << 20;
	char *mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(mem, sz, 30);
	pid_t c = fork_started();
	if (c == 0) {
		wait_usr1();
		CHECK(!bad_words(mem, sz, 30), "child: %zu bad words", bad_words(mem, sz, 30));
		fill(mem, 4096, 31);
		_exit(fails ? 1 : 0);
	}
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	CHECK(!bad_words(mem, sz, 30), "parent: %zu bad words", bad_words(mem, sz, 30));
	return finish();
}
