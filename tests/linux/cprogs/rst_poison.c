/* Poison markers (PTE_MARKER_POISONED, made with UFFDIO_POISON) come back where they were:
 * in private anonymous memory (inherited by a child through fork, as the kernel copies the
 * marker) and in a MAP_SHARED anonymous mapping of the parent only (a shared mapping's ptes
 * are not copied at fork: the child has none there). A read of a poisoned page is SIGBUS;
 * its neighbours keep their data and holes; the pagemap word says "marker" again. */
#include "check.h"
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <sys/ioctl.h>

#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#endif
#define P 4096

static sigjmp_buf jb;
static volatile sig_atomic_t caught;
static void on_fault(int sig)
{
	caught = sig;
	siglongjmp(jb, 1);
}

/* The signal a read of p raises (0: none). */
static int probe(const char *p)
{
	caught = 0;
	if (sigsetjmp(jb, 1) == 0) {
		volatile char c = *p;
		(void)c;
	}
	return caught;
}

static uint64_t pagemap(const void *p)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t w = 0;
	if (pread(fd, &w, 8, (off_t)((uintptr_t)p / P * 8)) != 8)
		w = 0;
	close(fd);
	return w;
}

static int poison(char *p, size_t len)
{
	int u = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_POISON };
	struct uffdio_register reg = { .range = { (uintptr_t)p, len },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	struct uffdio_poison po = { .range = { (uintptr_t)p, len } };
	int ok = u >= 0 && ioctl(u, UFFDIO_API, &api) == 0 && ioctl(u, UFFDIO_REGISTER, &reg) == 0 &&
		 ioctl(u, UFFDIO_POISON, &po) == 0;
	if (u >= 0)
		close(u);
	return ok;
}

static char *priv, *shared;

static void check_priv(const char *who)
{
	CHECK(probe(priv + 5 * P) == SIGBUS && probe(priv + 6 * P) == SIGBUS,
	      "%s: private pages 5-6 are not poisoned", who);
	/* a swap pte of type 31 (SWP_PTE_MARKER) with PTE_MARKER_POISONED (bit 1 << 5) */
	CHECK((pagemap(priv + 5 * P) >> 62 & 1) && (pagemap(priv + 5 * P) & 0x5f) == 0x5f,
	      "%s: pagemap of the poisoned page: %#llx", who,
	      (unsigned long long)pagemap(priv + 5 * P));
	CHECK(!bad_words(priv, 4 * P, 70) && !bad_words(priv + 7 * P, P, 71),
	      "%s: private data beside the poison lost", who);
	CHECK(probe(priv + 4 * P) == 0 && priv[4 * P] == 0, "%s: page 4 is not a hole", who);
}

int main(void)
{
	catch_usr1();
	struct sigaction sa = { .sa_handler = on_fault, .sa_flags = SA_NODEFER };
	sigaction(SIGBUS, &sa, NULL);
	priv = mmap(NULL, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shared = mmap(NULL, 4 * P, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fill(priv, 4 * P, 70);
	fill(priv + 7 * P, P, 71);
	fill(shared, P, 72);
	fill(shared + 3 * P, P, 73);
	CHECK(poison(priv + 5 * P, 2 * P), "UFFDIO_POISON (private): %s", strerror(errno));
	CHECK(poison(shared + 2 * P, P), "UFFDIO_POISON (shared): %s", strerror(errno));
	if (fails)
		return finish();
	check_priv("before");
	fflush(stdout);
	pid_t c = fork();
	if (c == 0) {
		wait_usr1();
		check_priv("child");
		CHECK(probe(shared + 2 * P) == 0, "child: shared page 2 is poisoned");
		CHECK(!bad_words(shared, P, 72), "child: shared data lost");
		_exit(fails ? 1 : 0);
	}
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	check_priv("parent");
	CHECK(probe(shared + 2 * P) == SIGBUS, "parent: shared page 2 is not poisoned");
	CHECK(!bad_words(shared, P, 72) && !bad_words(shared + 3 * P, P, 73),
	      "parent: shared data lost");
	return finish();
}
