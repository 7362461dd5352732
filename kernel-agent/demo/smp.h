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
#include "idt.h"
#include "layout.h"
#include "types.h"

struct cpu {
	uint32_t index;		/* 0 is the BSP; the demo's APIC IDs equal the index */
	uint32_t apic_id;
	volatile uint32_t online;
	uint32_t reserved;
	volatile uint64_t ticks;	/* local APIC timer interrupts taken */
	volatile uint64_t work_calls;	/* ap_work() calls */
	volatile uint64_t shootdown_seen;	/* the last shootdown generation it flushed for */
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
/*
 * Each AP reads this page at every tick (ap_work), so its TLB holds the
 * translation: a test unmaps it and sees whether the AP notices
 * (probe_faults) or still reads it through a stale TLB entry (probe_reads).
 */
extern volatile uint64_t ap_probe_page[PAGE_SIZE / 8];
/* Per CPU: reads of ap_probe_page that worked, and those that took a #PF. */
extern volatile uint64_t ap_probe_reads[MAX_CPUS], ap_probe_faults[MAX_CPUS];

/* Interrupt handlers (idt.c): the APs' local APIC timer, the agent's IPIs. */
void smp_timer_interrupt(void);
void smp_shootdown_interrupt(void);
void smp_hold_interrupt(void);
/* For interrupt_dispatch: true when the #PF was an AP's probe read, now skipped. */
bool smp_probe_fixup(struct interrupt_frame *frame);

/* The agent's hooks (agent_port.c, agent.h): CPUs online, hold/release, shootdown. */
unsigned smp_online(void *ctx);
void smp_hold_others(void *ctx);
void smp_release_others(void *ctx);
void smp_tlb_shootdown(void *ctx, uint64_t va, bool all);

#endif
