/* MAP_SHARED anonymous memory the parent unmapped after fork (the child alone keeps it),
 * and a memfd mapped by both and open at an offset in the parent: after the restore a write
 * by one is seen by the other, and through the fd. */
#include "check.h"
#include <sys/stat.h>

int main(void)
{
	catch_usr1();
	size_t sz = 64 << 10;
	char *shm = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fill(shm, sz, 40);
	int mfd = memfd_create("cycle", 0);
	ftruncate(mfd, sz);
	char *mem = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	lseek(mfd, 12, SEEK_SET);
	fill(mem, sz, 41);
	pid_t c = fork_started();
	if (c == 0) {
		close(mfd);
		wait_usr1();
		CHECK(!bad_words(shm, sz, 40), "child: shared anon lost %zu words",
		      bad_words(shm, sz, 40));
		CHECK(!bad_words(mem, sz, 41), "child: memfd lost %zu words", bad_words(mem, sz, 41));
		fill(mem, 4096, 42); /* the parent must see this */
		_exit(fails ? 1 : 0);
	}
	munmap(shm, sz);
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	CHECK(!bad_words(mem, 4096, 42), "parent does not see the child's memfd write");
	CHECK(lseek(mfd, 0, SEEK_CUR) == 12, "memfd offset %ld", (long)lseek(mfd, 0, SEEK_CUR));
	CHECK(pwrite(mfd, "hello", 5, 8192) == 5 && !memcmp(mem + 8192, "hello", 5),
	      "the memfd fd and the mapping are no longer one file");
	struct stat st;
	CHECK(fstat(mfd, &st) == 0 && st.st_size == (off_t)sz, "memfd size %ld", (long)st.st_size);
	return finish();
}
