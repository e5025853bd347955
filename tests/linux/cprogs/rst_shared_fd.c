/* Open file descriptions shared across the tree (inherited over fork): a TCP listener, an
 * eventfd, a regular file written by both (no O_APPEND: one offset) and a pipe's read end
 * held by parent and child, the file also dup'ed at fd 50; plus two more eventfds of the
 * parent's own (every eventfd is on the one anon inode: only the description tells them
 * apart). After the restore the child's O_NONBLOCK on the listener and on the pipe shows in
 * the parent, its eventfd writes reach the parent, the child accepts a connection on the
 * shared listener, the file's lines follow each other (neither overwrote the other), and
 * each eventfd of the parent kept its own count. */
#include "check.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

int main(void)
{
	catch_usr1();
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof(a);
	CHECK(bind(l, (void *)&a, alen) == 0 && listen(l, 4) == 0, "listen");
	getsockname(l, (void *)&a, &alen);
	int shared = eventfd(0, 0), e1 = eventfd(11, 0), e2 = eventfd(22, EFD_NONBLOCK);
	int ready[2], done[2], sp[2];
	CHECK(pipe(ready) == 0 && pipe(done) == 0 && pipe(sp) == 0, "pipes");
	int f = open("shared.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(f >= 0 && dup2(f, 50) == 50, "shared.txt");
	CHECK(write(f, "p0\n", 3) == 3, "p0");
	pid_t c = fork_started();
	if (c == 0) {
		close(e1);
		close(e2);
		CHECK(write(f, "c0\n", 3) == 3, "c0");
		CHECK(write(done[1], "0", 1) == 1, "c0 done");
		wait_usr1();
		fcntl(l, F_SETFL, O_NONBLOCK);
		fcntl(sp[0], F_SETFL, O_NONBLOCK);
		CHECK(write(f, "c1\n", 3) == 3, "c1");
		uint64_t one = 1;
		CHECK(write(shared, &one, 8) == 8, "child eventfd write");
		char r;
		CHECK(read(ready[0], &r, 1) == 1, "parent never connected");
		int x = accept(l, NULL, NULL);
		CHECK(x >= 0, "child accept on the shared listener: %s", strerror(errno));
		CHECK(write(done[1], "d", 1) == 1, "done");
		_exit(fails ? 1 : 0);
	}
	char d;
	CHECK(read(done[0], &d, 1) == 1, "child never wrote c0");
	say("READY");
	wait_usr1();
	kill(c, SIGUSR1);
	uint64_t v = 0;
	CHECK(read(shared, &v, 8) == 8 && v == 1, "shared eventfd: %lu", (unsigned long)v);
	CHECK(fcntl(l, F_GETFL) & O_NONBLOCK, "the child's O_NONBLOCK is not on the parent's "
	      "listener: two descriptions");
	int s = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(s, (void *)&a, alen) == 0, "connect: %s", strerror(errno));
	CHECK(write(ready[1], "r", 1) == 1, "ready");
	CHECK(read(done[0], &d, 1) == 1, "child never accepted");
	CHECK(fcntl(sp[0], F_GETFL) & O_NONBLOCK, "the child's O_NONBLOCK is not on the "
	      "parent's pipe end");
	CHECK(write(50, "p1\n", 3) == 3, "p1");
	char text[32] = { 0 };
	int r = open("shared.txt", O_RDONLY);
	CHECK(read(r, text, sizeof(text) - 1) == 12 && !strcmp(text, "p0\nc0\nc1\np1\n"),
	      "shared file: '%s' (offsets apart?)", text);
	CHECK(lseek(f, 0, SEEK_CUR) == 12, "offset of fd %d: %ld", f, (long)lseek(f, 0, SEEK_CUR));
	CHECK(read(e1, &v, 8) == 8 && v == 11, "e1 count %lu", (unsigned long)v);
	CHECK(read(e2, &v, 8) == 8 && v == 22, "e2 count %lu", (unsigned long)v);
	CHECK(read(e2, &v, 8) == -1 && errno == EAGAIN, "e2 lost EFD_NONBLOCK");
	check_child(c, 0);
	return finish();
}
