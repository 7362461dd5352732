/*
 * Boot options that make the demo kernel fail on purpose, one fault class
 * each, for the inspector's fault analysis (`fault=NAME` on the PVH command
 * line; README, "Faults on purpose"). Each prints a line on COM1 that starts
 * with "kinspect-demo: fault=NAME:" and then faults at a global label
 * `fault_<name>_insn` (pf-user: at FAULT_USER_VA, in ring 3).
 */
#ifndef DEMO_FAULT_DEMO_H
#define DEMO_FAULT_DEMO_H

#include "types.h"

enum fault_demo {
	FAULT_PF_NOTPRESENT,	/* read at NULL+0x10: PT entry not present, #PF 0x0 */
	FAULT_PF_WRITE_RO,	/* write to .rodata with CR0.WP: #PF 0x3 */
	FAULT_PF_NX,		/* call into .data (NX): #PF 0x11 */
	FAULT_PF_USER,		/* ring 3 reads a supervisor page: #PF 0x5 */
	FAULT_GP_SELECTOR,	/* the TSS selector loaded into DS: #GP 0x28 */
	FAULT_DF_STACK,		/* recursion into boot_stack_guard: #PF, #PF, #DF on IST1 */
	FAULT_TRIPLE_IDT,	/* IDTR on an unmapped page, then ud2: triple fault */
	FAULT_SEED_LOWGDT,	/* GDT at its physical address, identity map dropped, sti */
	FAULT_TRIPLE_DF_GATE,	/* the #DF gate cleared (P=0), then df-stack: #NP, triple fault */
	FAULT_DEMO_COUNT,
};

/* A canonical user address with nothing else in its PML4 slot (254). */
#define FAULT_USER_VA 0x00007f0000000000UL

/* The boot option of each fault class ("fault=pf-notpresent", ...). */
extern const char *const fault_demo_options[FAULT_DEMO_COUNT];

/* Prints the fault's line and faults; returns only for an unknown class. */
void fault_demo_run(enum fault_demo which);

#endif
