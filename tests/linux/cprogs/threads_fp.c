/* Two threads besides main, each with its own values in ymm8/ymm9 held across the
 * checkpoint; the thread ids survive. */
#include "check.h"
#include <pthread.h>

static const char ready_msg[] = "READY\n";
static volatile int loaded;

struct slot { uint64_t in[8], out[8]; pid_t tid, tid_after; };

static void hold(struct slot *s, int announce)
{
	s->tid = gettid();
	__asm__ volatile(
		"vmovdqu (%[in]), %%ymm8\n\t"
		"vmovdqu 32(%[in]), %%ymm9\n\t"
		"lock incl (%[cnt])\n\t"
		"test %[ann], %[ann]\n\t"
		"jz 2f\n\t"
		"3: cmpl $3, (%[cnt])\n\t"
		"jne 3b\n\t"
		"mov $1, %%eax\n\t"
		"mov $1, %%edi\n\t"
		"mov %[msg], %%rsi\n\t"
		"mov $6, %%edx\n\t"
		"syscall\n\t"
		"2: pause\n\t"
		"cmpl $0, (%[flag])\n\t"
		"je 2b\n\t"
		"vmovdqu %%ymm8, (%[out])\n\t"
		"vmovdqu %%ymm9, 32(%[out])\n\t"
		:
		: [in] "r"(s->in), [out] "r"(s->out), [flag] "r"(&got_usr1), [msg] "r"(ready_msg),
		  [cnt] "r"(&loaded), [ann] "r"(announce)
		: "rax", "rdi", "rsi", "rdx", "rcx", "r11", "xmm8", "xmm9", "memory", "cc");
	s->tid_after = gettid();
}

static void *worker(void *arg) { hold(arg, 0); return NULL; }

int main(void)
{
	catch_usr1_unblocked();
	static struct slot slots[3];
	for (int t = 0; t < 3; t++)
		for (int i = 0; i < 8; i++)
			slots[t].in[i] = pattern(10 + t, i);
	fflush(stdout);
	pthread_t th[2];
	for (int t = 0; t < 2; t++)
		pthread_create(&th[t], NULL, worker, &slots[t + 1]);
	hold(&slots[0], 1);
	for (int t = 0; t < 2; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < 3; t++) {
		for (int i = 0; i < 8; i++)
			CHECK(slots[t].out[i] == slots[t].in[i], "thread %d ymm word %d: %#lx, want %#lx",
			      t, i, slots[t].out[i], slots[t].in[i]);
		CHECK(slots[t].tid == slots[t].tid_after, "thread %d: tid %d became %d", t,
		      slots[t].tid, slots[t].tid_after);
	}
	return finish();
}
