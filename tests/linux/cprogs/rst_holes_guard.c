/* Holes stay holes and guards stay guards: a memfd and a MAP_SHARED anonymous region with
 * a few written pages report the same SEEK_DATA/SEEK_HOLE extents after the restore (the
 * anonymous one through our own /proc/self/map_files entry: we run as root), and a guard
 * region (MADV_GUARD_INSTALL) still faults on access while its neighbours hold their data. */
#include "check.h"
#include <setjmp.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static sigjmp_buf jb;
static void on_segv(int sig) { (void)sig; siglongjmp(jb, 1); }

static int faults(volatile char *p)
{
	if (sigsetjmp(jb, 1))
		return 1;
	(void)*p;
	return 0;
}

/* "d:0-1,5-6,9-10" style extents of fd, into buf. */
static void extents(int fd, size_t size, char *buf, size_t n)
{
	off_t pos = 0;
	buf[0] = 0;
	while ((size_t)pos < size) {
		off_t d = lseek(fd, pos, SEEK_DATA);
		if (d < 0)
			break;
		off_t h = lseek(fd, d, SEEK_HOLE);
		snprintf(buf + strlen(buf), n - strlen(buf), "%ld-%ld,", (long)(d >> 12), (long)(h >> 12));
		pos = h;
	}
}

int main(void)
{
	catch_usr1();
	size_t sz = 16 * 4096;
	int mfd = memfd_create("holes", 0);
	ftruncate(mfd, sz);
	char *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	char *a = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 16; i += 5) {
		fill(m + i * 4096, 4096, 50 + i);
		fill(a + i * 4096, 4096, 70 + i);
	}
	char *g = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(g, 8 * 4096, 90);
	int have_guard = madvise(g + 2 * 4096, 3 * 4096, MADV_GUARD_INSTALL) == 0;
	char path[64], before_m[256], before_a[256], after_m[256], after_a[256];
	snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (long)a, (long)(a + sz));
	int afd = open(path, O_RDONLY);
	CHECK(afd >= 0, "open %s: %s", path, strerror(errno));
	extents(mfd, sz, before_m, sizeof(before_m));
	extents(afd, sz, before_a, sizeof(before_a));
	close(afd);
	say("READY");
	wait_usr1();
	afd = open(path, O_RDONLY);
	CHECK(afd >= 0, "open %s after restore: %s", path, strerror(errno));
	extents(mfd, sz, after_m, sizeof(after_m));
	extents(afd, sz, after_a, sizeof(after_a));
	CHECK(!strcmp(before_m, after_m), "memfd extents %s, were %s", after_m, before_m);
	CHECK(!strcmp(before_a, after_a), "shared anon extents %s, were %s", after_a, before_a);
	for (int i = 0; i < 16; i += 5) {
		CHECK(!bad_words(m + i * 4096, 4096, 50 + i), "memfd page %d lost", i);
		CHECK(!bad_words(a + i * 4096, 4096, 70 + i), "shared anon page %d lost", i);
	}
	struct sigaction sa = { .sa_handler = on_segv };
	sigaction(SIGSEGV, &sa, NULL);
	if (have_guard) {
		for (int i = 2; i < 5; i++)
			CHECK(faults(g + i * 4096), "guard page %d reads without a fault", i);
	}
	CHECK(!bad_words(g, 2 * 4096, 90), "pages before the guard lost");
	CHECK(!faults(g + 5 * 4096), "the page after the guard faults");
	const uint64_t *w = (const uint64_t *)g;
	size_t bad = 0;
	for (size_t i = 5 * 512; i < 8 * 512; i++)
		bad += w[i] != pattern(90, i);
	CHECK(!bad, "pages after the guard: %zu bad words", bad);
	printf("extents %s | %s guard=%d\n", after_m, after_a, have_guard);
	return finish();
}
