/* Seccomp filters (mode 2) under no_new_privs, kept by a restore: filter A makes uname()
 * fail EAGAIN; a second thread starts (it inherits A); filter B (SECCOMP_FILTER_FLAG_LOG,
 * installed with TSYNC: both threads share it) makes sysinfo() fail E2BIG. After the
 * restore, in both threads: the two calls still fail so, getpid() works, /proc shows mode
 * 2 with 2 filters and NoNewPrivs; and the filters are still shared by the threads (one
 * more TSYNC filter from the leader succeeds only if the other thread's chain is an
 * ancestor of the leader's: kernel/seccomp.c seccomp_can_sync_threads). */
#include "check.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>

static int deny(int nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = 4, .filter = f };
	return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static int go[2];
static int thread_fails;

static int status_field(const char *path, const char *key)
{
	char line[256];
	int v = -1;
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, strlen(key)))
			v = atoi(line + strlen(key));
	if (f)
		fclose(f);
	return v;
}

static int check_here(const char *who)
{
	char path[64];
	struct utsname u;
	struct sysinfo si;
	int before = fails;
	errno = 0;
	CHECK(uname(&u) == -1 && errno == EAGAIN, "%s: uname: %s", who, strerror(errno));
	errno = 0;
	CHECK(sysinfo(&si) == -1 && errno == E2BIG, "%s: sysinfo: %s", who, strerror(errno));
	CHECK(getpid() > 0, "%s: getpid", who);
	snprintf(path, sizeof path, "/proc/self/task/%ld/status", (long)syscall(SYS_gettid));
	CHECK(status_field(path, "Seccomp:") == 2, "%s: Seccomp %d", who,
	      status_field(path, "Seccomp:"));
	CHECK(status_field(path, "Seccomp_filters:") == 2, "%s: Seccomp_filters %d", who,
	      status_field(path, "Seccomp_filters:"));
	CHECK(status_field(path, "NoNewPrivs:") == 1, "%s: NoNewPrivs %d", who,
	      status_field(path, "NoNewPrivs:"));
	return fails - before;
}

static void *worker(void *arg)
{
	char c;
	(void)arg;
	while (read(go[0], &c, 1) < 0 && errno == EINTR)
		;
	thread_fails = check_here("thread");
	return NULL;
}

int main(void)
{
	pthread_t th;
	catch_usr1();  /* blocked before the thread starts: SIGUSR1 is the main thread's */
	CHECK(pipe(go) == 0, "pipe");
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
	CHECK(deny(SYS_uname, EAGAIN, 0) == 0, "filter A: %s", strerror(errno));
	CHECK(pthread_create(&th, NULL, worker, NULL) == 0, "thread");
	CHECK(deny(SYS_sysinfo, E2BIG, SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG) == 0,
	      "filter B (TSYNC): %s", strerror(errno));
	say("READY");
	wait_usr1();
	check_here("leader");
	CHECK(write(go[1], "g", 1) == 1, "go");
	pthread_join(th, NULL);
	CHECK(!thread_fails, "the thread's checks failed");
	/* still one chain: a TSYNC filter from the leader reaches the thread */
	long r = deny(SYS_getcpu, EPERM, SECCOMP_FILTER_FLAG_TSYNC);
	CHECK(r == 0, "TSYNC after restore: %ld (%s): the threads' filters are not shared", r,
	      strerror(errno));
	return finish();
}
