/* Credentials and security state: every capability set (a bounding set with two bits
 * dropped, an inheritable bit outside it, an ambient bit), securebits (KEEP_CAPS, NOROOT,
 * NOROOT_LOCKED), no_new_privs, supplementary groups, and -- unless built with STAY_ROOT
 * (CRIU cannot dump a task of another uid here: restore.md §8.3) -- distinct real,
 * effective, saved and fs ids. A second thread drops its own effective set (credentials
 * are per thread). After SIGUSR1 both threads must hold exactly what they held. */
#include "check.h"
#include <grp.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#define BIT(n) (1ull << (n))
#define EFF BIT(CAP_NET_BIND_SERVICE)
#define PRM (BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_KILL) | BIT(CAP_CHOWN))
#define AMB BIT(CAP_NET_BIND_SERVICE)
#define SECBITS 0x13 /* SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS */

static const char *keys[] = { "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:",
			      "CapBnd:", "CapAmb:", "NoNewPrivs:", "Seccomp:" };
static volatile int t2_ready, stop;
static pid_t t2_tid;
/* Two bounding bits to drop, the first also inheritable (outside the bounding set then):
 * the first two of these we hold (a container may lack some). */
static const int droppable[] = { CAP_SYS_BOOT, CAP_MKNOD, CAP_SYS_TTY_CONFIG, CAP_LEASE,
				 CAP_AUDIT_CONTROL, CAP_WAKE_ALARM };
static int drop1 = -1, drop2 = -1;
static uint64_t INH;

static int capset3(uint64_t eff, uint64_t prm, uint64_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = { { eff, prm, inh },
					       { eff >> 32, prm >> 32, inh >> 32 } };
	return syscall(SYS_capset, &h, d); /* this thread only (glibc has no wrapper) */
}

/* The lines of keys from a thread's status, concatenated. */
static void creds_of(pid_t tid, char *out, size_t n)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/self/task/%d/status", tid);
	FILE *f = fopen(path, "r");
	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		for (size_t i = 0; i < sizeof(keys) / sizeof(*keys); i++)
			if (!strncmp(line, keys[i], strlen(keys[i])))
				strncat(out, line, n - strlen(out) - 1);
	fclose(f);
}

static uint64_t field(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	return p ? strtoull(p + strlen(key), NULL, 16) : ~0ull;
}

static void *second(void *arg)
{
	(void)arg;
	t2_tid = syscall(SYS_gettid);
	CHECK(capset3(0, PRM, INH) == 0, "thread 2 capset: %s", strerror(errno));
	t2_ready = 1;
	while (!stop) {
		struct timespec ts = { 0, 20000000 };
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(void)
{
	char before1[2048], before2[2048], after1[2048], after2[2048];
	pid_t me = getpid();
	creds_of(me, before1, sizeof(before1));
	uint64_t bnd = field(before1, "CapBnd:");
	uint64_t all = field(before1, "CapPrm:");
	for (size_t i = 0; i < sizeof(droppable) / sizeof(*droppable); i++) {
		if (!(bnd & BIT(droppable[i])))
			continue;
		if (drop1 < 0)
			drop1 = droppable[i];
		else if (drop2 < 0)
			drop2 = droppable[i];
	}
	CHECK(drop1 >= 0 && drop2 >= 0, "no two bounding capabilities to drop");
	INH = BIT(CAP_NET_BIND_SERVICE) | BIT(drop1);
	bnd &= ~(BIT(drop1) | BIT(drop2));
	CHECK(capset3(all, all, INH) == 0, "capset inheritable: %s", strerror(errno));
	CHECK(prctl(PR_CAPBSET_DROP, drop1) == 0 && prctl(PR_CAPBSET_DROP, drop2) == 0,
	      "PR_CAPBSET_DROP: %s", strerror(errno));
	CHECK(prctl(PR_SET_SECUREBITS, SECBITS) == 0, "PR_SET_SECUREBITS: %s", strerror(errno));
	gid_t groups[] = { 3000, 3001 };
	CHECK(setgroups(2, groups) == 0, "setgroups: %s", strerror(errno));
#ifndef STAY_ROOT
	CHECK(setresgid(2000, 2001, 2002) == 0, "setresgid: %s", strerror(errno));
	CHECK(setresuid(1000, 1001, 1002) == 0, "setresuid: %s", strerror(errno));
	setfsuid(1002); /* the saved ids: allowed without CAP_SETUID/CAP_SETGID */
	setfsgid(2000);
#endif
	CHECK(capset3(EFF, PRM, INH) == 0, "capset: %s", strerror(errno));
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) == 0,
	      "ambient raise: %s", strerror(errno));
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs: %s", strerror(errno));
	pthread_t t;
	pthread_create(&t, NULL, second, NULL);
	while (!t2_ready)
		usleep(1000);
	creds_of(me, before1, sizeof(before1));
	creds_of(t2_tid, before2, sizeof(before2));
	/* the setup took: the sets are the ones asked for */
	CHECK(field(before1, "CapEff:") == EFF && field(before1, "CapPrm:") == PRM &&
	      field(before1, "CapInh:") == INH && field(before1, "CapAmb:") == AMB &&
	      field(before1, "CapBnd:") == bnd, "setup: %s", before1);
	CHECK(field(before2, "CapEff:") == 0 && field(before2, "CapAmb:") == AMB,
	      "setup thread 2: %s", before2);
	say("READY");
	catch_usr1();
	wait_usr1();
	creds_of(me, after1, sizeof(after1));
	creds_of(t2_tid, after2, sizeof(after2));
	CHECK(!strcmp(before1, after1), "main thread:\n%s-- now --\n%s", before1, after1);
	CHECK(!strcmp(before2, after2), "thread 2:\n%s-- now --\n%s", before2, after2);
	CHECK(prctl(PR_GET_SECUREBITS) == SECBITS, "securebits %#x", prctl(PR_GET_SECUREBITS));
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs lost");
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) == 1,
	      "ambient CAP_NET_BIND_SERVICE lost");
	CHECK(prctl(PR_CAPBSET_READ, drop1) == 0 && prctl(PR_CAPBSET_READ, drop2) == 0,
	      "a dropped bounding capability is back");
	uid_t r, e, s;
	gid_t rg, eg, sg;
	getresuid(&r, &e, &s);
	getresgid(&rg, &eg, &sg);
	gid_t now[8];
	int n = getgroups(8, now);
	CHECK(n == 2 && now[0] == 3000 && now[1] == 3001, "groups (%d)", n);
#ifndef STAY_ROOT
	CHECK(r == 1000 && e == 1001 && s == 1002, "uids %d %d %d", r, e, s);
	CHECK(rg == 2000 && eg == 2001 && sg == 2002, "gids %d %d %d", rg, eg, sg);
	CHECK(setfsuid(-1) == 1002 && setfsgid(-1) == 2000, "fsuid/fsgid");
	/* CAP_NET_BIND_SERVICE works for a non-root uid; CAP_CHOWN is not effective */
	int sk = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int ok = 0;
	for (int port = 700; port < 720 && !ok; port++) {
		a.sin_port = htons(port);
		int rc = bind(sk, (struct sockaddr *)&a, sizeof(a));
		CHECK(rc == 0 || errno == EADDRINUSE, "bind to port %d: %s", port, strerror(errno));
		ok = rc == 0 || errno != EADDRINUSE;
	}
	close(sk);
	CHECK(chown("/proc/self/comm", 0, 0) != 0, "chown worked without CAP_CHOWN effective");
#else
	CHECK(r == 0 && e == 0 && s == 0 && rg == 0 && eg == 0 && sg == 0, "ids not root's");
#endif
	CHECK(getpid() == me, "pid %d, want %d", getpid(), me);
	stop = 1;
	pthread_join(t, NULL);
	return finish();
}
