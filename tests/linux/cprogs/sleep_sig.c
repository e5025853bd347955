/* Blocked in nanosleep, with a SA_SIGINFO handler (and its mask and flags) for SIGUSR1 and
 * SIG_IGN for SIGUSR2, and a file open at an offset. */
#include "check.h"

static volatile int handled;

static void on_info(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	handled = sig == SIGUSR1 && si->si_signo == SIGUSR1;
	got_usr1 = 1;
}

int main(void)
{
	struct sigaction sa = { .sa_sigaction = on_info, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGUSR2, SIG_IGN);
	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGWINCH);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	int fd = open("offset.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
	char text[100];
	for (int i = 0; i < 100; i++)
		text[i] = 'a' + i % 26;
	CHECK(write(fd, text, 100) == 100, "write");
	lseek(fd, 42, SEEK_SET);
	pid_t me = getpid();
	say("READY");
	while (!got_usr1) {
		struct timespec ts = { .tv_sec = 1 }; /* a signal just before it: 1 s late */
		nanosleep(&ts, NULL);
	}
	CHECK(handled, "the SA_SIGINFO handler did not see SIGUSR1");
	struct sigaction now;
	sigaction(SIGUSR1, NULL, &now);
	CHECK(now.sa_sigaction == on_info, "handler changed");
	CHECK((now.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART),
	      "flags %#x", now.sa_flags);
	CHECK(sigismember(&now.sa_mask, SIGUSR2) && sigismember(&now.sa_mask, SIGHUP),
	      "handler mask lost");
	sigaction(SIGUSR2, NULL, &now);
	CHECK(now.sa_handler == SIG_IGN, "SIGUSR2 no longer ignored");
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	CHECK(sigismember(&cur, SIGWINCH), "SIGWINCH no longer blocked");
	CHECK(lseek(fd, 0, SEEK_CUR) == 42, "offset %ld, want 42", (long)lseek(fd, 0, SEEK_CUR));
	char back[58];
	CHECK(read(fd, back, 58) == 58 && !memcmp(back, text + 42, 58), "file content");
	CHECK(getpid() == me, "pid %d, want %d", getpid(), me);
	return finish();
}
