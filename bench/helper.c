/* bench.live's helper, three commands (built by bench/live.py with cc -O2 -pthread):
 *
 *   helper hold SIZE private|shared STATUS
 *       map SIZE bytes (MAP_PRIVATE or MAP_SHARED, anonymous), write every page (0x5a, the
 *       first word of each page its index: compressible, no two pages alike), write
 *       "PID ADDRESS\n" to STATUS, then wait for signals. A ticker thread wakes every
 *       millisecond and keeps the longest gap between two wake-ups: how long the process
 *       was stopped. Each SIGUSR1 writes that gap (nanoseconds) to STATUS (via a rename)
 *       and starts a new one. stdio is expected on /dev/null (nothing CRIU must dump).
 *   helper write SIZE PATH 0|1
 *       fill a buffer of SIZE bytes (warm), then time write(2) of it to PATH, and fsync
 *       with 1; prints the seconds: CRIU's "plain copy" reference.
 *   helper rss PROGRAM ARGS...
 *       run the program, print "RSS KIB STATUS" on stderr: its peak RSS from wait4
 *       (this tiny process's own RSS is the floor, not a Python parent's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int64_t max_gap, last_tick;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *ticker(void *arg)
{
	struct timespec ms = {0, 1000000};
	(void)arg;
	for (;;) {
		nanosleep(&ms, NULL);
		int64_t t = now_ns(), gap = t - last_tick;
		if (gap > max_gap)
			max_gap = gap;
		last_tick = t;
	}
	return NULL;
}

static void fill(char *p, size_t size)
{
	memset(p, 0x5a, size);
	for (size_t off = 0; off < size; off += 4096)
		*(uint64_t *)(p + off) = off / 4096;
}

static void put(const char *status, const char *text)
{
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", status);
	FILE *f = fopen(tmp, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0 || rename(tmp, status) != 0) {
		perror(status);
		exit(1);
	}
}

static int hold(size_t size, int shared, const char *status)
{
	int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS;
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	fill(p, size);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* the ticker inherits the mask */
	pthread_t t;
	last_tick = now_ns();
	if (pthread_create(&t, NULL, ticker, NULL)) {
		perror("pthread_create");
		return 1;
	}
	char line[128];
	snprintf(line, sizeof(line), "%d %lu\n", getpid(), (unsigned long)p);
	put(status, line);
	for (;;) {
		int sig;
		if (sigwait(&set, &sig) == 0 && sig == SIGUSR1) {
			/* The stop may still be running in the ticker's books: after a thaw
			 * this thread can run before the ticker does. */
			int64_t now = now_ns() - last_tick, gap = max_gap > now ? max_gap : now;
			snprintf(line, sizeof(line), "%lld\n", (long long)gap);
			max_gap = 0;
			put(status, line);
		}
	}
}

static int write_ref(size_t size, const char *path, int sync)
{
	char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	fill(p, size);
	int64_t t = now_ns();
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	for (size_t done = 0; done < size;) {
		ssize_t n = write(fd, p + done, size - done);
		if (n <= 0) {
			perror("write");
			return 1;
		}
		done += n;
	}
	if (sync && fsync(fd)) {
		perror("fsync");
		return 1;
	}
	close(fd);
	printf("%.6f\n", (now_ns() - t) / 1e9);
	return 0;
}

static int rss(char **argv)
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 1;
	}
	if (pid == 0) {
		execvp(argv[0], argv);
		perror(argv[0]);
		_exit(127);
	}
	int status;
	struct rusage ru;
	while (wait4(pid, &status, 0, &ru) < 0)
		if (errno != EINTR) {
			perror("wait4");
			return 1;
		}
	fprintf(stderr, "RSS %ld %d\n", ru.ru_maxrss, status);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
	if (argc >= 5 && !strcmp(argv[1], "hold"))
		return hold(strtoull(argv[2], NULL, 0), !strcmp(argv[3], "shared"), argv[4]);
	if (argc >= 5 && !strcmp(argv[1], "write"))
		return write_ref(strtoull(argv[2], NULL, 0), argv[3], atoi(argv[4]));
	if (argc >= 3 && !strcmp(argv[1], "rss"))
		return rss(argv + 2);
	fprintf(stderr, "usage: helper hold SIZE private|shared STATUS | write SIZE PATH 0|1 | "
		"rss PROGRAM ARGS...\n");
	return 2;
}
