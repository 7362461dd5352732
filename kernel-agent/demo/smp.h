/*
 * The application processors (APs): brought up with INIT-SIPI-SIPI through
 * a real-mode trampoline below 1 MiB (trampoline.S), each with a GDT, a TSS
 * (RSP0 and a #DF stack on IST1) and a kernel stack of its own, sharing the
 * kernel's page tables and IDT. They idle in HLT and wake on their local
 * APIC timer to run ap_work(), where a test can stop them.
 */
#ifndef DEMO_SMP_H
#define DEMO_SMP_H

#include "gdt.h"
#include "layout.h"
#include "types.h"

struct cpu {
	uint32_t index;		/* 0 is the BSP; the demo's APIC IDs equal the index */
	uint32_t apic_id;
	volatile uint32_t online;
	uint32_t reserved;
	volatile uint64_t ticks;	/* local APIC timer interrupts taken */
	volatile uint64_t work_calls;	/* ap_work() calls */
	struct gdt gdt __aligned(16);	/* the BSP's are kernel_gdt and kernel_tss */
	struct tss tss __aligned(16);
};

/* Filled in by smp.c before each SIPI; read by the trampoline (trampoline.S). */
struct ap_trampoline_params {
	uint32_t cr0, cr3, cr4, efer;
	uint64_t stack;
	uint64_t cpu;
	uint64_t entry;
} __packed;

_Static_assert(sizeof(struct ap_trampoline_params) == 40, "trampoline.S parameter block");

extern struct cpu cpus[MAX_CPUS];
extern unsigned smp_cpus_online;

/* Bring up every CPU QEMU was started with (fw_cfg), or none when it has one. */
void smp_init(bool uefi);
/* The local APIC timer's interrupt, on an AP. */
void smp_timer_interrupt(void);

#endif
