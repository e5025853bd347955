/* Shared by the self-checking programs of tests/linux/test_criu_restore.py: each sets up
 * its state, prints READY, waits for SIGUSR1, then checks everything itself and prints
 * PASS or FAIL lines (stdout is a regular file: flushed before every fork and wait). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static int fails;

static inline void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

/* The handler, with SIGUSR1 blocked but inside wait_usr1's sigsuspend: a signal sent
 * while the restored task is about to re-execute its interrupted sigsuspend stays pending
 * until it sleeps there, instead of running the handler just before it and being lost. */
static inline void catch_usr1(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
}

/* For programs that spin on got_usr1 instead of sleeping. */
static inline void catch_usr1_unblocked(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
}

static inline void say(const char *what)
{
	printf("%s\n", what);
	fflush(stdout);
}

/* Sleep in sigsuspend until SIGUSR1 came (a restore may wake it early: it sleeps again). */
static inline void wait_usr1(void)
{
	sigset_t mask;
	sigprocmask(SIG_BLOCK, NULL, &mask);
	sigdelset(&mask, SIGUSR1);
	while (!got_usr1)
		sigsuspend(&mask);
}

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		if (!(cond)) {                                             \
			printf("FAIL [%d] %s:%d: ", getpid(), __FILE__, __LINE__); \
			printf(__VA_ARGS__);                               \
			printf("\n");                                      \
			fflush(stdout);                                    \
			fails++;                                           \
		}                                                          \
	} while (0)

static inline uint64_t pattern(uint64_t tag, uint64_t i) { return tag * 0x9E3779B97F4A7C15ull ^ i; }

static inline void fill(void *p, size_t bytes, uint64_t tag)
{
	uint64_t *w = p;
	for (size_t i = 0; i < bytes / 8; i++)
		w[i] = pattern(tag, i);
}

static inline size_t bad_words(const void *p, size_t bytes, uint64_t tag)
{
	const uint64_t *w = p;
	size_t bad = 0;
	for (size_t i = 0; i < bytes / 8; i++)
		bad += w[i] != pattern(tag, i);
	return bad;
}

static inline int finish(void)
{
	say(fails ? "FAIL" : "PASS");
	return fails ? 1 : 0;
}

/* A child's exit status: 0 if it checked out, else a FAIL line. */
static inline void check_child(pid_t pid, int want)
{
	int status = 0;
	pid_t r = waitpid(pid, &status, 0);
	CHECK(r == pid, "waitpid(%d) = %d (%s)", pid, r, strerror(errno));
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == want,
	      "child %d: status %#x, want exit %d", pid, status, want);
}

/* fork(), returning in the parent once the child runs (so it holds no half-made state) */
static inline pid_t fork_started(void)
{
	int p[2];
	char r = 'r';
	CHECK(pipe(p) == 0, "pipe");
	fflush(stdout);
	pid_t c = fork();
	if (c == 0) {
		close(p[0]);
		CHECK(write(p[1], &r, 1) == 1, "started write");
		close(p[1]);
		return 0;
	}
	close(p[1]);
	CHECK(read(p[0], &r, 1) == 1, "child %d never started", c);
	close(p[0]);
	return c;
}
