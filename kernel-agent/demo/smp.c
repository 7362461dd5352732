#include "smp.h"
#include "idt.h"
#include "kprintf.h"
#include "lapic.h"
#include "agent.h"
#include "string.h"
#include "x86.h"

/* QEMU's fw_cfg on I/O ports: a 16-bit key selects an item, then its bytes. */
#define FW_CFG_PORT_SEL 0x510
#define FW_CFG_PORT_DATA 0x511
#define FW_CFG_SIGNATURE 0x00
#define FW_CFG_NB_CPUS 0x05

/* The APs' local APIC timer: 1 GHz bus in QEMU, divided by 16: 100 Hz. */
#define AP_TIMER_COUNT 625000

#define CHAIN_FN __attribute__((noinline, noclone))

extern const char ap_trampoline_start[], ap_trampoline_end[], ap_trampoline_params[];

struct cpu cpus[MAX_CPUS];
unsigned smp_cpus_online = 1;

static char ap_stacks[MAX_CPUS][AP_STACK_SIZE] __aligned(PAGE_SIZE);
static char ap_df_stacks[MAX_CPUS][DF_STACK_SIZE] __aligned(PAGE_SIZE);

static void fw_cfg_select(uint16_t key)
{
	__asm__ volatile("outw %0, %1" : : "a"(key), "Nd"((uint16_t)FW_CFG_PORT_SEL));
}

static unsigned fw_cfg_cpus(void)
{
	char signature[4];
	uint16_t count;

	fw_cfg_select(FW_CFG_SIGNATURE);
	for (unsigned i = 0; i < 4; i++)
		signature[i] = (char)inb(FW_CFG_PORT_DATA);
	if (memcmp(signature, "QEMU", 4) != 0)
		return 1;
	fw_cfg_select(FW_CFG_NB_CPUS);
	count = inb(FW_CFG_PORT_DATA);
	count |= (uint16_t)(inb(FW_CFG_PORT_DATA) << 8);
	return count ? count : 1;
}

static void wait_cycles(unsigned long n)
{
	while (n--)
		__asm__ volatile("pause");
}

volatile uint64_t ap_probe_page[PAGE_SIZE / 8] __aligned(PAGE_SIZE) __section(".bss.probe");
volatile uint64_t ap_probe_reads[MAX_CPUS], ap_probe_faults[MAX_CPUS];

/* The AP's probe read: a fault here is recorded and skipped (smp_probe_fixup). */
CHAIN_FN uint64_t ap_probe(struct cpu *cpu)
{
	uint64_t value = 0;

	__asm__ volatile(".globl ap_probe_insn\n"
			 "ap_probe_insn:\n\t"
			 "movq (%2), %0\n\t"
			 "incq %1\n"
			 ".globl ap_probe_resume\n"
			 "ap_probe_resume:\n\t"
			 : "+r"(value), "+m"(ap_probe_reads[cpu->index])
			 : "r"(&ap_probe_page[cpu->index])
			 : "memory");
	return value;
}

extern char ap_probe_insn[], ap_probe_resume[];

bool smp_probe_fixup(struct interrupt_frame *frame)
{
	if (frame->rip != (uint64_t)ap_probe_insn)
		return false;
	ap_probe_faults[lapic_id() % MAX_CPUS]++;
	frame->rip = (uint64_t)ap_probe_resume;
	return true;
}

/* Where a test stops an AP: each timer tick on an AP runs this chain. */
CHAIN_FN uint64_t ap_level2(struct cpu *cpu)
{
	cpu->work_calls++;
	return ap_probe(cpu) ^ cpu->index;
}

CHAIN_FN uint64_t ap_work(struct cpu *cpu)
{
	uint64_t r = ap_level2(cpu);

	return r + 1;
}

void smp_timer_interrupt(void)
{
	cpus[lapic_id() % MAX_CPUS].ticks++;
	lapic_eoi();
}

/*
 * The agent's hooks. A shootdown is a generation number with its address:
 * each AP flushes when it sees a generation it has not flushed for, in the
 * shootdown IPI's handler or, while held, in the hold loop (a held AP has
 * interrupts masked and takes the IPI only once released: it then finds
 * nothing new to do).
 */
static volatile uint64_t shootdown_generation, shootdown_va;
static volatile bool shootdown_all;
static volatile uint32_t hold_requested, cpus_held;

/* Spin limits: an AP that never answers must not hang the agent for good. */
#define SMP_WAIT_SPINS 100000000UL

static void service_shootdown(struct cpu *cpu)
{
	uint64_t generation = __atomic_load_n(&shootdown_generation, __ATOMIC_ACQUIRE);

	if (cpu->shootdown_seen == generation)
		return;
	agent_x86_flush_tlb(NULL, shootdown_va, shootdown_all);
	__atomic_store_n(&cpu->shootdown_seen, generation, __ATOMIC_RELEASE);
}

void smp_shootdown_interrupt(void)
{
	service_shootdown(&cpus[lapic_id() % MAX_CPUS]);
	lapic_eoi();
}

void smp_hold_interrupt(void)
{
	struct cpu *cpu = &cpus[lapic_id() % MAX_CPUS];

	lapic_eoi();
	__atomic_add_fetch(&cpus_held, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(&hold_requested, __ATOMIC_ACQUIRE)) {
		service_shootdown(cpu);
		__asm__ volatile("pause");
	}
	service_shootdown(cpu);
	__atomic_sub_fetch(&cpus_held, 1, __ATOMIC_ACQ_REL);
}

unsigned smp_online(void *ctx)
{
	(void)ctx;
	return smp_cpus_online;
}

void smp_hold_others(void *ctx)
{
	(void)ctx;
	__atomic_store_n(&hold_requested, 1, __ATOMIC_RELEASE);
	lapic_send_ipi_others(VECTOR_HOLD);
	for (unsigned long spin = 0; spin < SMP_WAIT_SPINS; spin++) {
		if (__atomic_load_n(&cpus_held, __ATOMIC_ACQUIRE) == smp_cpus_online - 1)
			return;
		__asm__ volatile("pause");
	}
}

void smp_release_others(void *ctx)
{
	(void)ctx;
	__atomic_store_n(&hold_requested, 0, __ATOMIC_RELEASE);
	for (unsigned long spin = 0; spin < SMP_WAIT_SPINS; spin++) {
		if (__atomic_load_n(&cpus_held, __ATOMIC_ACQUIRE) == 0)
			return;
		__asm__ volatile("pause");
	}
}

void smp_tlb_shootdown(void *ctx, uint64_t va, bool all)
{
	(void)ctx;
	shootdown_va = va;
	shootdown_all = all;
	uint64_t generation = __atomic_add_fetch(&shootdown_generation, 1, __ATOMIC_ACQ_REL);

	lapic_send_ipi_others(VECTOR_SHOOTDOWN);
	for (unsigned i = 1; i < smp_cpus_online; i++)
		for (unsigned long spin = 0; spin < SMP_WAIT_SPINS; spin++) {
			if (__atomic_load_n(&cpus[i].shootdown_seen, __ATOMIC_ACQUIRE) == generation)
				break;
			__asm__ volatile("pause");
		}
}

/* An AP's first C, on its own stack, with the kernel's page tables. */
__noreturn void ap_main(struct cpu *cpu)
{
	gdt_setup(&cpu->gdt, &cpu->tss, (uint64_t)ap_stacks[cpu->index] + AP_STACK_SIZE,
		  (uint64_t)ap_df_stacks[cpu->index] + DF_STACK_SIZE);
	gdt_load(&cpu->gdt);
	idt_load();
	lapic_enable(VECTOR_LAPIC_SPURIOUS);
	lapic_timer_periodic(VECTOR_LAPIC_TIMER, AP_TIMER_COUNT);
	__atomic_store_n(&cpu->online, 1, __ATOMIC_RELEASE);
	/* No console from here on: COM1 is the BSP's and the agent's. */
	for (;;) {
		__asm__ volatile("sti; hlt" : : : "memory");
		ap_work(cpu);
	}
}

static bool start_ap(struct cpu *cpu, const struct ap_trampoline_params *params)
{
	memcpy((void *)(uint64_t)(AP_TRAMPOLINE_PHYS + (ap_trampoline_params - ap_trampoline_start)),
	       params, sizeof(*params));
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	lapic_send_ipi(cpu->apic_id, LAPIC_ICR_INIT | LAPIC_ICR_ASSERT);
	wait_cycles(100000);
	for (unsigned sipi = 0; sipi < 2; sipi++) {
		lapic_send_ipi(cpu->apic_id, LAPIC_ICR_STARTUP | (AP_TRAMPOLINE_PHYS >> 12));
		wait_cycles(10000);
		if (__atomic_load_n(&cpu->online, __ATOMIC_ACQUIRE))
			return true;
	}
	for (unsigned long spin = 0; spin < 200000000UL; spin++) {
		if (__atomic_load_n(&cpu->online, __ATOMIC_ACQUIRE))
			return true;
		__asm__ volatile("pause");
	}
	return false;
}

void smp_init(bool uefi)
{
	unsigned wanted = fw_cfg_cpus();
	uint64_t top = read_cr3() & ~0xfffUL;

	cpus[0].index = 0;
	cpus[0].apic_id = lapic_id();
	cpus[0].online = 1;
	if (wanted <= 1)
		return;
	if (wanted > MAX_CPUS) {
		kprintf("kinspect-demo: smp: %u CPUs, bringing up the first %u\n", wanted, MAX_CPUS);
		wanted = MAX_CPUS;
	}
	if (top >> 32) {
		kprintf("kinspect-demo: smp: the top page table 0x%lx is above 4 GiB, where the "
			"32-bit trampoline cannot load it: one CPU\n", top);
		return;
	}
	if (!uefi)
		lapic_virtual_wire(); /* the BSP's APIC enabled, the 8259 still on LINT0 */

	memcpy((void *)(uint64_t)AP_TRAMPOLINE_PHYS, ap_trampoline_start,
	       (size_t)(ap_trampoline_end - ap_trampoline_start));

	struct ap_trampoline_params params = {
		.cr0 = (uint32_t)read_cr0(),
		.cr3 = (uint32_t)top,
		.cr4 = (uint32_t)read_cr4(),
		.efer = (uint32_t)(rdmsr(MSR_EFER) & (EFER_SCE | EFER_LME | EFER_NXE)),
		.entry = (uint64_t)ap_main,
	};

	for (unsigned i = 1; i < wanted; i++) {
		struct cpu *cpu = &cpus[i];

		cpu->index = i;
		cpu->apic_id = i;
		params.stack = (uint64_t)ap_stacks[i] + AP_STACK_SIZE;
		params.cpu = (uint64_t)cpu;
		if (!start_ap(cpu, &params)) {
			kprintf("kinspect-demo: smp: cpu %u (APIC ID %u) did not come up\n", i,
				cpu->apic_id);
			break;
		}
		smp_cpus_online++;
		kprintf("kinspect-demo: cpu %u online: APIC ID %u, GDT %p, TSS %p, stack %p-%p\n", i,
			cpu->apic_id, (void *)&cpu->gdt, (void *)&cpu->tss, (void *)ap_stacks[i],
			(void *)(ap_stacks[i] + AP_STACK_SIZE));
	}
	kprintf("kinspect-demo: smp: %u cpus online\n", smp_cpus_online);
}
