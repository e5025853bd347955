/* SysV shared memory in the tree's own IPC namespace (run under `unshare --ipc`): a
 * two-page segment attached by parent and child, written by both; after the restore the
 * key, size and mode are kept and a write by one is seen by the other. */
#include "check.h"
#include <sys/ipc.h>
#include <sys/shm.h>

int main(void)
{
	catch_usr1();
	int id = shmget(0x5eed, 8192, IPC_CREAT | 0640);
	CHECK(id >= 0, "shmget: %s", strerror(errno));
	char *seg = shmat(id, NULL, 0);
	memset(seg, 'p', 8192);
	pid_t c = fork_started();
	if (c == 0) {
		wait_usr1();
		for (int i = 0; i < 8192; i++)
			if (seg[i] != 'p') {
				CHECK(0, "child: byte %d is %#x", i, seg[i]);
				break;
			}
		seg[100] = 'c';
		_exit(fails ? 1 : 0);
	}
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	check_child(c, 0);
	CHECK(seg[100] == 'c', "the child's write is not seen");
	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_segsz == 8192 &&
	      (ds.shm_perm.mode & 0777) == 0640 && ds.shm_perm.__key == 0x5eed,
	      "segment: size %zu mode %o key %#x", ds.shm_segsz, ds.shm_perm.mode & 0777,
	      ds.shm_perm.__key);
	CHECK(shmget(0x5eed, 0, 0) == id, "key no longer names the segment");
	return finish();
}
