/*
 * A deliberately handled page fault whose handler calls further, so that a
 * debugger stopped inside the handler must unwind through the IRETQ frame
 * back to the interrupted function:
 *
 *   demo_work -> trap_demo -> trap_demo_fault (writes to boot_stack_guard)
 *     #PF -> isr_stub_14 -> interrupt_common -> interrupt_dispatch
 *       -> trap_demo_fixup -> trap_demo_handler -> trap_demo_inner
 *
 * trap_demo_fixup moves the saved RIP to trap_demo_fault_resume, so the
 * kernel carries on.
 */
#ifndef DEMO_TRAP_DEMO_H
#define DEMO_TRAP_DEMO_H

#include "idt.h"
#include "types.h"

extern char trap_demo_fault_insn[], trap_demo_fault_resume[];
extern volatile uint64_t trap_demo_faults;

uint64_t trap_demo(uint64_t ticks);
uint64_t trap_demo_fault(void);
uint64_t trap_demo_handler(uint64_t error_code);
uint64_t trap_demo_inner(uint64_t error_code);
/* For interrupt_dispatch: true when the #PF was trap_demo_fault's and is fixed up. */
bool trap_demo_fixup(struct interrupt_frame *frame);

#endif
