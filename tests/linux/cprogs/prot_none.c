/* Data in regions later made PROT_NONE and PROT_READ-only, and a guard region
 * (MADV_GUARD_INSTALL) that must still fault after the restore. */
#include "check.h"
#include <setjmp.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static sigjmp_buf jump;
static void on_segv(int sig) { (void)sig; siglongjmp(jump, 1); }

int main(void)
{
	catch_usr1();
	size_t sz = 4 * 4096;
	char *none = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(none, sz, 3);
	mprotect(none, sz, PROT_NONE);
	char *ro = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(ro, sz, 4);
	mprotect(ro, sz, PROT_READ);
	char *guard = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(guard, sz, 5);
	int guarded = madvise(guard + 4096, 4096, MADV_GUARD_INSTALL) == 0;
	say("READY");
	wait_usr1();
	CHECK(!bad_words(ro, sz, 4), "PROT_READ region lost its data");
	mprotect(none, sz, PROT_READ);
	CHECK(!bad_words(none, sz, 3), "PROT_NONE region lost its data");
	if (guarded) {
		struct sigaction sa = { .sa_handler = on_segv, .sa_flags = SA_NODEFER };
		sigaction(SIGSEGV, &sa, NULL);
		int faulted = 0;
		if (sigsetjmp(jump, 1) == 0)
			(void)*(volatile char *)(guard + 4096);
		else
			faulted = 1;
		CHECK(faulted, "the guard page no longer faults");
		CHECK(guard[0] == (char)pattern(5, 0), "page before the guard lost its data");
	}
	return finish();
}
