/* A child blocked in read(2) on a pipe from its parent, and a second pipe holding bytes
 * nobody has read yet: after the restore the parent writes, the child gets both. */
#include "check.h"

int main(void)
{
	catch_usr1();
	int wake[2], early[2];
	pipe(wake);
	pipe(early);
	CHECK(write(early[1], "early bytes", 11) == 11, "early write");
	fflush(stdout);
	pid_t c = fork();
	if (c == 0) {
		close(wake[1]);
		close(early[1]);
		char buf[64] = { 0 };
		ssize_t n = read(wake[0], buf, sizeof(buf)); /* blocks across the checkpoint */
		CHECK(n == 4 && !memcmp(buf, "late", 4), "wake pipe gave %zd bytes '%.*s'", n,
		      (int)(n > 0 ? n : 0), buf);
		n = read(early[0], buf, sizeof(buf));
		CHECK(n == 11 && !memcmp(buf, "early bytes", 11), "early pipe gave %zd bytes", n);
		_exit(fails ? 1 : 0);
	}
	close(wake[0]);
	close(early[0]);
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/syscall", c);
	for (;;) { /* until the child sleeps in read() */
		char s[32] = { 0 };
		int fd = open(path, O_RDONLY);
		read(fd, s, sizeof(s) - 1);
		close(fd);
		if (!strncmp(s, "0 ", 2))
			break;
		usleep(1000);
	}
	say("READY");
	wait_usr1();
	CHECK(write(wake[1], "late", 4) == 4, "late write");
	check_child(c, 0);
	return finish();
}
