/* A SysV segment (key, id, a hole) attached by parent and child: after the restore both see
 * the data, a write by one is seen by the other, and the id and key are the dumped ones. */
#include "check.h"
#include <sys/ipc.h>
#include <sys/shm.h>

int main(void)
{
	catch_usr1();
	key_t key = 0x5e0000 | (getpid() & 0xffff);
	int id = shmget(key, 16 * 4096, IPC_CREAT | IPC_EXCL | 0600);
	CHECK(id >= 0, "shmget: %s", strerror(errno));
	char *m = shmat(id, NULL, 0);
	shmctl(id, IPC_RMID, NULL); /* gone once the last task detaches */
	fill(m, 4 * 4096, 40);
	fill(m + 10 * 4096, 4096, 41); /* pages 4-9 and 11-15 stay holes */
	fflush(stdout);
	pid_t c = fork();
	if (c == 0) {
		wait_usr1();
		CHECK(!bad_words(m, 4 * 4096, 40), "child: segment data lost");
		fill(m + 12 * 4096, 4096, 42);
		_exit(fails ? 1 : 0);
	}
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	CHECK(!bad_words(m + 10 * 4096, 4096, 41), "parent: page 10 lost");
	CHECK(!bad_words(m + 12 * 4096, 4096, 42), "parent: the child's write is not shared");
	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0, "id %d is gone after restore: %s", id, strerror(errno));
	CHECK(ds.shm_perm.__key == key || ds.shm_perm.__key == 0, "key %#x, want %#x",
	      ds.shm_perm.__key, key);
	shmctl(id, IPC_RMID, NULL); /* a restore re-creates it without the removal mark */
	return finish();
}
