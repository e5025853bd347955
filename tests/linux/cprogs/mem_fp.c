/* Private memory (heap, anonymous, a written private file mapping)
 * and FP/vector registers held in ymm8/ymm9 across the checkpoint by a spin loop that
 * calls nothing (the kernel keeps FP state over the signal handler). */
#include "check.h"

static const char ready_msg[] = "READY\n";

int main(void)
{
	catch_usr1_unblocked();
	size_t heap_sz = 4 << 20, anon_sz = 1 << 20;
	char *heap = malloc(heap_sz);
	fill(heap, heap_sz, 1);
	char *anon = mmap(NULL, anon_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(anon, anon_sz, 2);
	int fd = open("backing.bin", O_RDWR | O_CREAT | O_TRUNC, 0600);
	char *buf = calloc(1, 8 * 4096);
	fill(buf, 8 * 4096, 4);
	CHECK(write(fd, buf, 8 * 4096) == 8 * 4096, "write backing");
	char *fmap = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	close(fd);
	fill(fmap + 2 * 4096, 2 * 4096, 5); /* two pages COWed from the file */
	uint64_t in[8], out[8] = { 0 };
	for (int i = 0; i < 8; i++)
		in[i] = pattern(6, i);
	fflush(stdout);
	__asm__ volatile(
		"vmovdqu (%[in]), %%ymm8\n\t"
		"vmovdqu 32(%[in]), %%ymm9\n\t"
		"mov $1, %%eax\n\t"
		"mov $1, %%edi\n\t"
		"mov %[msg], %%rsi\n\t"
		"mov $6, %%edx\n\t"
		"syscall\n\t"
		"1: pause\n\t"
		"cmpl $0, (%[flag])\n\t"
		"je 1b\n\t"
		"vmovdqu %%ymm8, (%[out])\n\t"
		"vmovdqu %%ymm9, 32(%[out])\n\t"
		:
		: [in] "r"(in), [out] "r"(out), [flag] "r"(&got_usr1), [msg] "r"(ready_msg)
		: "rax", "rdi", "rsi", "rdx", "rcx", "r11", "xmm8", "xmm9", "memory");
	for (int i = 0; i < 8; i++)
		CHECK(out[i] == in[i], "ymm word %d: %#lx, want %#lx", i, out[i], in[i]);
	CHECK(!bad_words(heap, heap_sz, 1), "heap: %zu bad words", bad_words(heap, heap_sz, 1));
	CHECK(!bad_words(anon, anon_sz, 2), "anon: %zu bad words", bad_words(anon, anon_sz, 2));
	CHECK(!memcmp(fmap, buf, 2 * 4096), "file pages 0-1 differ from the file");
	CHECK(!bad_words(fmap + 2 * 4096, 2 * 4096, 5), "written file pages 2-3 lost");
	CHECK(!memcmp(fmap + 4 * 4096, buf + 4 * 4096, 4 * 4096), "file pages 4-7 differ");
	return finish();
}
