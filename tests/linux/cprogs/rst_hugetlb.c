/* hugetlb objects and memory come back in huge pages, with their data and their holes:
 * a MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB mapping shared with a child, a MFD_HUGETLB memfd
 * (held open and mapped), a SysV SHM_HUGETLB segment, and private MAP_HUGETLB memory.
 * Holes: the huge pages each object has allocated (st_blocks of its hugetlbfs inode, the
 * kernel's count: hugetlb_add_to_page_cache) are the same before the dump and after the
 * restore; the private mapping has only its written huge page (smaps Private_Hugetlb).
 * Every mapping's KernelPageSize is 2048 kB again. Needs 12 free 2 MiB huge pages. */
#include "check.h"
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>

#define HP (2UL << 20)
#define HUGE_2MB (21U << 26)

/* Huge pages a mapping's inode holds (its map_files entry, so SysV and anonymous too). */
static long held(const void *p, size_t len)
{
	char path[96];
	snprintf(path, sizeof path, "/proc/self/map_files/%lx-%lx", (unsigned long)p,
		 (unsigned long)p + len);
	struct stat st;
	if (stat(path, &st) != 0)
		return -1;
	return (long)(st.st_blocks * 512 / HP);
}

/* A field (kB) of the smaps entry of the VMA starting at p. */
static long smaps_kb(const void *p, const char *field)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[256], want[32];
	long v = -1;
	int in = 0;
	snprintf(want, sizeof want, "%lx-", (unsigned long)p);
	while (f && fgets(line, sizeof line, f)) {
		if ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f'))
			in = strncmp(line, want, strlen(want)) == 0; /* a VMA's first line */
		else if (in && strncmp(line, field, strlen(field)) == 0 && line[strlen(field)] == ':') {
			v = atol(line + strlen(field) + 1);
			break;
		}
	}
	if (f)
		fclose(f);
	return v;
}

static char *anon, *priv, *mfd_map, *sysv;
static int mfd, shmid;

static void check_all(const char *when)
{
	CHECK(held(anon, 4 * HP) == 2, "%s: anon hugetlb holds %ld huge pages, want 2", when,
	      held(anon, 4 * HP));
	struct stat st;
	CHECK(fstat(mfd, &st) == 0 && st.st_blocks * 512 / HP == 1 && st.st_size == (off_t)(4 * HP),
	      "%s: memfd holds %ld huge pages (want 1), size %ld", when,
	      (long)(st.st_blocks * 512 / HP), (long)st.st_size);
	CHECK(held(sysv, 2 * HP) == 1, "%s: SysV holds %ld huge pages, want 1", when,
	      held(sysv, 2 * HP));
	CHECK(smaps_kb(priv, "Private_Hugetlb") == 2048, "%s: private hugetlb: %ld kB, want 2048",
	      when, smaps_kb(priv, "Private_Hugetlb"));
	const void *maps[] = { anon, priv, mfd_map, sysv };
	for (int i = 0; i < 4; i++)
		CHECK(smaps_kb(maps[i], "KernelPageSize") == 2048, "%s: mapping %d: %ld kB pages",
		      when, i, smaps_kb(maps[i], "KernelPageSize"));
	CHECK(!bad_words(anon, HP, 50) && !bad_words(anon + 2 * HP, HP, 52), "%s: anon data", when);
	CHECK(!bad_words(priv + HP, HP, 53), "%s: private data", when);
	CHECK(!bad_words(mfd_map + HP, HP, 54), "%s: memfd data", when);
	CHECK(!bad_words(sysv, HP, 55), "%s: SysV data", when);
}

int main(void)
{
	catch_usr1();
	anon = mmap(NULL, 4 * HP, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | HUGE_2MB, -1, 0);
	priv = mmap(NULL, 2 * HP, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | HUGE_2MB, -1, 0);
	mfd = memfd_create("rst-huge", MFD_HUGETLB | HUGE_2MB);
	CHECK(anon != MAP_FAILED && priv != MAP_FAILED && mfd >= 0, "hugetlb: %s", strerror(errno));
	CHECK(ftruncate(mfd, 4 * HP) == 0, "ftruncate: %s", strerror(errno));
	mfd_map = mmap(NULL, 4 * HP, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	key_t key = 0x6e0000 | (getpid() & 0xffff);
	shmid = shmget(key, 2 * HP, IPC_CREAT | IPC_EXCL | SHM_HUGETLB | 0600);
	CHECK(mfd_map != MAP_FAILED && shmid >= 0, "memfd map / shmget: %s", strerror(errno));
	if (fails)
		return finish();
	sysv = shmat(shmid, NULL, 0);
	shmctl(shmid, IPC_RMID, NULL); /* gone once the last task detaches */
	fill(anon, HP, 50);
	fill(anon + 2 * HP, HP, 52); /* huge pages 1 and 3 stay holes */
	fill(priv + HP, HP, 53);     /* page 0 never touched */
	fill(mfd_map + HP, HP, 54);  /* 0, 2, 3 holes */
	fill(sysv, HP, 55);          /* 1 a hole */
	check_all("before");
	fflush(stdout);
	pid_t c = fork();
	if (c == 0) {
		wait_usr1();
		CHECK(!bad_words(anon, HP, 50), "child: anon data lost");
		fill(anon + 2 * HP, 4096, 56); /* within a page that holds data: no new huge page */
		_exit(fails ? 1 : 0);
	}
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	CHECK(!bad_words(anon + 2 * HP, 4096, 56), "the child's write is not shared");
	fill(anon + 2 * HP, 4096, 52);
	check_all("after");
	struct shmid_ds ds;
	CHECK(shmctl(shmid, IPC_STAT, &ds) == 0, "SysV id %d gone: %s", shmid, strerror(errno));
	shmctl(shmid, IPC_RMID, NULL);
	return finish();
}
