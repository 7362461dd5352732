#include "work.h"
#include "trap_demo.h"

/*
 * noinline keeps the frames; noclone keeps the symbol names (no .isra or
 * .constprop copies); using each callee's result after the call keeps GCC
 * from turning the calls into tail jumps.
 */
#define CHAIN_FN __attribute__((noinline, noclone))

volatile uint64_t demo_state = 1;
volatile uint64_t demo_work_calls;

CHAIN_FN uint64_t demo_level3(uint64_t x)
{
	/* One step of a 64-bit LCG (Knuth's MMIX constants). */
	uint64_t next = demo_state * 6364136223846793005UL + (x | 1);

	demo_state = next;
	return next >> 33;
}

CHAIN_FN uint64_t demo_level2(uint64_t x)
{
	uint64_t r = demo_level3(x ^ 0x9e3779b97f4a7c15UL);

	demo_state ^= r;
	return r + 2;
}

CHAIN_FN uint64_t demo_level1(uint64_t x)
{
	uint64_t r = demo_level2(x * 3);

	demo_state += r;
	return r + 1;
}

CHAIN_FN uint64_t demo_work(uint64_t ticks)
{
	uint64_t r = demo_level1(ticks);

	r += trap_demo(ticks); /* a handled #PF: see trap_demo.h */
	demo_work_calls++;
	return r;
}
