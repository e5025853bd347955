/* A shell job on a pseudo-terminal that changed its terminal: a window size of 33x77 and
 * ECHO and ICANON off. Restored with --shell-job on another terminal, its stdio is that
 * terminal, with the settings it had (CRIU's restore_tty_params), and its output shows
 * there. */
#include "check.h"
#include <sys/ioctl.h>
#include <termios.h>

int main(void)
{
	catch_usr1();
	CHECK(isatty(0) && isatty(1), "stdio is no terminal");
	struct winsize ws = { .ws_row = 33, .ws_col = 77 };
	CHECK(ioctl(0, TIOCSWINSZ, &ws) == 0, "TIOCSWINSZ");
	struct termios t;
	tcgetattr(0, &t);
	t.c_lflag &= ~(ECHO | ICANON);
	t.c_cc[VMIN] = 3;
	CHECK(tcsetattr(0, TCSANOW, &t) == 0, "tcsetattr");
	char before[64];
	CHECK(ttyname_r(1, before, sizeof(before)) == 0, "ttyname");
	say("READY");
	wait_usr1();
	CHECK(isatty(0) && isatty(1) && isatty(2), "stdio is no terminal after the restore");
	struct winsize now = { 0 };
	CHECK(ioctl(1, TIOCGWINSZ, &now) == 0 && now.ws_row == 33 && now.ws_col == 77,
	      "window %dx%d, want 33x77", now.ws_row, now.ws_col);
	struct termios got;
	CHECK(tcgetattr(1, &got) == 0 && !(got.c_lflag & (ECHO | ICANON)) && got.c_cc[VMIN] == 3,
	      "termios lflag %#x vmin %d", got.c_lflag, got.c_cc[VMIN]);
	char after[64];
	CHECK(ttyname_r(1, after, sizeof(after)) == 0, "ttyname after");
	printf("terminal %s, then %s\n", before, after);
	return finish();
}
