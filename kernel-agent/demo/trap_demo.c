#include "trap_demo.h"

/* Unmapped on purpose (paging.c leaves the page below the boot stack out). */
extern char boot_stack_guard[];

#define TRAP_FN __attribute__((noinline, noclone))

volatile uint64_t trap_demo_faults;
volatile uint64_t trap_demo_value = 7;

TRAP_FN uint64_t trap_demo_inner(uint64_t error_code)
{
	trap_demo_value = trap_demo_value * 31 + error_code;
	return trap_demo_value;
}

TRAP_FN uint64_t trap_demo_handler(uint64_t error_code)
{
	uint64_t r = trap_demo_inner(error_code);

	trap_demo_faults++;
	return r;
}

TRAP_FN bool trap_demo_fixup(struct interrupt_frame *frame)
{
	if (frame->rip != (uint64_t)trap_demo_fault_insn)
		return false;
	trap_demo_handler(frame->error_code);
	frame->rip = (uint64_t)trap_demo_fault_resume;
	return true;
}

/* A supervisor write to a not-present page: #PF with error code 0x2 (W). */
TRAP_FN uint64_t trap_demo_fault(void)
{
	uint64_t value = 1;

	__asm__ volatile(".globl trap_demo_fault_insn\n"
			 "trap_demo_fault_insn:\n\t"
			 "movq %0, (%1)\n"
			 ".globl trap_demo_fault_resume\n"
			 "trap_demo_fault_resume:\n\t"
			 : "+r"(value)
			 : "r"(boot_stack_guard)
			 : "memory");
	return value;
}

TRAP_FN uint64_t trap_demo(uint64_t ticks)
{
	uint64_t r = trap_demo_fault();

	return r + ticks;
}
