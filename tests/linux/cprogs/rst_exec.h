/* Checks of a task's own address space after a restore, for the programs of
 * tests/linux/test_restore_exec.py (a tree whose tasks exec'd): the vdso is where the
 * kernel's auxv and the task's libc say (clock_gettime runs through it), /proc/self/exe is
 * the program it exec'd, and its pid and parent are the ones it had. */
#include "check.h"
#include <sys/auxv.h>

struct self {
	char exe[4096];
	unsigned long vdso;
	pid_t pid, ppid;
	struct timespec t0;
};

/* The [vdso] start in /proc/self/maps; 0 without one. */
static inline unsigned long maps_vdso(void)
{
	char line[512];
	unsigned long a = 0, got = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (strstr(line, "[vdso]") && sscanf(line, "%lx-", &a) == 1)
			got = a;
	fclose(f);
	return got;
}

/* AT_SYSINFO_EHDR in the kernel's saved auxv (/proc/self/auxv: PR_SET_MM_MAP's). */
static inline unsigned long kernel_auxv_vdso(void)
{
	unsigned long v[2], got = 0;
	FILE *f = fopen("/proc/self/auxv", "rb");
	if (!f)
		return 0;
	while (fread(v, sizeof v, 1, f) == 1 && v[0])
		if (v[0] == AT_SYSINFO_EHDR)
			got = v[1];
	fclose(f);
	return got;
}

static inline void self_record(struct self *s)
{
	ssize_t n = readlink("/proc/self/exe", s->exe, sizeof s->exe - 1);
	s->exe[n > 0 ? n : 0] = 0;
	s->vdso = maps_vdso();
	s->pid = getpid();
	s->ppid = getppid();
	clock_gettime(CLOCK_MONOTONIC, &s->t0);
	CHECK(s->vdso && s->vdso == getauxval(AT_SYSINFO_EHDR), "vdso %#lx, auxv %#lx",
	      s->vdso, getauxval(AT_SYSINFO_EHDR));
}

static inline void self_check(const struct self *s, const char *who)
{
	char exe[4096];
	struct timespec t1;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	exe[n > 0 ? n : 0] = 0;
	CHECK(!strcmp(exe, s->exe), "%s: exe %s, was %s", who, exe, s->exe);
	CHECK(maps_vdso() == s->vdso, "%s: [vdso] at %#lx, was %#lx", who, maps_vdso(), s->vdso);
	CHECK(kernel_auxv_vdso() == s->vdso, "%s: auxv AT_SYSINFO_EHDR %#lx, vdso %#lx", who,
	      kernel_auxv_vdso(), s->vdso);
	/* through the vdso at the address libc found it at exec */
	CHECK(clock_gettime(CLOCK_MONOTONIC, &t1) == 0 && (t1.tv_sec > s->t0.tv_sec ||
	      (t1.tv_sec == s->t0.tv_sec && t1.tv_nsec >= s->t0.tv_nsec)), "%s: clock", who);
	CHECK(getpid() == s->pid, "%s: pid %d, was %d", who, getpid(), s->pid);
	CHECK(getppid() == s->ppid, "%s: parent %d, was %d", who, getppid(), s->ppid);
}
