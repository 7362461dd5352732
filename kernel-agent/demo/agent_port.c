/*
 * The demo kernel's port of the agent: COM1 for bytes (shared with kprintf),
 * physical memory through the direct map, and only where the direct map has
 * it (2 MiB chunks that hold RAM, less the UEFI runtime regions), so a
 * request for MMIO, a hole or firmware memory is an error reply instead of
 * a machine check or a #PF. On a UEFI boot it hands the agent the system
 * table and the kept memory map, so the inspector can call the runtime
 * services through it. Console input typed on
 * the line between frames is echoed back a line at a time.
 *
 * The agent is polled from the idle loop, which wakes on every interrupt.
 * The UART's receive interrupt (IRQ4, FIFO trigger at 4 bytes) wakes it as
 * soon as bytes arrive: a real 16550 holds only 16, which a 100 Hz poll
 * alone would let overflow at 115200 baud (QEMU's holds the sender back).
 */
#include "agent.h"
#include "agent_port.h"
#include "efi.h"
#include "kprintf.h"
#include "layout.h"
#include "memmap.h"
#include "paging.h"
#include "pic.h"
#include "serial.h"
#include "smp.h"
#include "x86.h"
#include "string.h"

#define ECHO_MAX 80

#define UART_IER 1
#define UART_FCR 2
#define IER_RX_AVAILABLE 0x01
#define FCR_ENABLE_CLEAR_4 0x47 /* enable, clear RX/TX, interrupt at 4 bytes */
#define COM1_IRQ 4

static struct agent demo_agent;
static char echo_line[ECHO_MAX + 1];
static unsigned echo_len;

static int port_rx(void *ctx)
{
	(void)ctx;
	return serial_try_getc();
}

static void port_tx(void *ctx, const uint8_t *buf, size_t len)
{
	(void)ctx;
	serial_write(buf, len);
}

/* Exactly what the direct map maps (memmap_direct_mapped): never a #PF. */
static bool direct_mapped(uint64_t pa, size_t len)
{
	if (pa + len < pa)
		return false;
	for (uint64_t page = pa & ~(uint64_t)(PAGE_SIZE - 1); page < pa + len; page += PAGE_SIZE)
		if (!memmap_direct_mapped(page))
			return false;
	return true;
}

static int port_read_phys(void *ctx, uint64_t pa, void *buf, size_t len)
{
	(void)ctx;
	if (!direct_mapped(pa, len))
		return AGENT_E_FAULT;
	memcpy(buf, (const void *)(direct_map_base + pa), len);
	return AGENT_OK;
}

/* Page tables for the inspector's remaps: in .bss.pagetables, so the identity map leaves them out. */
#define AGENT_POOL_PAGES 32
static uint64_t agent_pt_pool[AGENT_POOL_PAGES][PT_ENTRIES] __aligned(PAGE_SIZE)
	__section(".bss.pagetables");
static unsigned agent_pt_used;

static int port_write_phys(void *ctx, uint64_t pa, const void *buf, size_t len)
{
	(void)ctx;
	if (!direct_mapped(pa, len))
		return AGENT_E_FAULT;
	memcpy((void *)(direct_map_base + pa), buf, len);
	return AGENT_OK;
}

static int port_alloc_table(void *ctx, uint64_t *pa)
{
	(void)ctx;
	if (agent_pt_used == AGENT_POOL_PAGES)
		return AGENT_E_FAULT;
	uint64_t *table = agent_pt_pool[agent_pt_used++];

	memset(table, 0, PAGE_SIZE);
	*pa = (uint64_t)table - KERNEL_VMA;
	return AGENT_OK;
}

static uint64_t port_phys_to_virt(void *ctx, uint64_t pa)
{
	(void)ctx;
	return direct_map_base + pa;
}

extern char __text_start[], __text_end[];

static void port_console_input(void *ctx, uint8_t byte)
{
	(void)ctx;
	if (byte == '\r' || byte == '\n') {
		if (echo_len) {
			echo_line[echo_len] = 0;
			kprintf("kinspect-demo: echo %s\n", echo_line);
			echo_len = 0;
		}
		return;
	}
	if (echo_len < ECHO_MAX && byte >= 0x20 && byte < 0x7f)
		echo_line[echo_len++] = (char)byte;
}

static const struct agent_ops demo_agent_ops = {
	.rx = port_rx,
	.tx = port_tx,
	.read_phys = port_read_phys,
	.read_cpu = agent_x86_read_cpu,
	.console_input = port_console_input,
	.irq_save = agent_x86_irq_save,
	.irq_restore = agent_x86_irq_restore,
	.relax = agent_x86_relax,
	.write_phys = port_write_phys,
	.alloc_table = port_alloc_table,
	.flush_tlb = agent_x86_flush_tlb,
	.phys_to_virt = port_phys_to_virt,
	.rebase_stack = agent_x86_rebase_stack,
	.load_descriptors = agent_x86_load_descriptors,
	.write_cr3 = agent_x86_write_cr3,
};

/* One CMOS RTC register (seconds, minutes, ...): entropy that differs between boots. */
static uint8_t cmos_read(uint8_t reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

/*
 * This boot's nonce: the TSC read now (it counts from power-on, and boot
 * takes a different number of cycles each time) mixed with the RTC's date
 * and time, through splitmix64's finalizer. No RDRAND on the CPUs the demo
 * targets (qemu64), so this is the entropy the kernel has; it only has to
 * tell two boots apart, not resist an adversary.
 */
static uint64_t boot_nonce(void)
{
	uint32_t lo, hi;
	uint64_t x;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	x = ((uint64_t)hi << 32) | lo;
	for (uint8_t reg = 0; reg <= 9; reg++)
		x = (x << 7 | x >> 57) ^ cmos_read(reg);
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x ? x : 1;
}

void demo_agent_init(bool shootdown)
{
	static struct agent_ops ops;
	static struct agent_efi demo_efi;
	int status;

	/* The code range is known at link time only: fill it in here. */
	ops = demo_agent_ops;
	ops.code_start = (uint64_t)__text_start;
	ops.code_end = (uint64_t)__text_end;
	ops.boot_nonce = boot_nonce();
	if (efi_boot_info_paddr) {
		demo_efi.system_table = efi_system_table_paddr;
		demo_efi.memmap = efi_memmap;
		demo_efi.memmap_size = efi_memmap_size;
		demo_efi.desc_size = efi_memmap_desc_size;
		demo_efi.desc_version = efi_memmap_desc_version;
		demo_efi.memattr = efi_memattr_size ? efi_memattr : NULL;
		demo_efi.memattr_size = efi_memattr_size;
		ops.efi = &demo_efi;
		ops.efi_call = agent_x86_efi_call;
	}
	if (smp_cpus_online > 1) {
		/* Several CPUs: held while the agent serves; TLBs flushed everywhere. */
		ops.cpus_online = smp_online;
		ops.hold_others = smp_hold_others;
		ops.release_others = smp_release_others;
		ops.tlb_shootdown = shootdown ? smp_tlb_shootdown : NULL;
	}
	status = agent_init(&demo_agent, &ops, NULL);

	if (status != AGENT_OK)
		panic("agent: %s", agent_strerror(status));
	outb(COM1_PORT + UART_FCR, FCR_ENABLE_CLEAR_4);
	outb(COM1_PORT + UART_IER, IER_RX_AVAILABLE);
	pic_unmask(COM1_IRQ);
	kprintf("kinspect-demo: agent %s on COM1 (protocol %u)\n", AGENT_VERSION,
		AGENT_PROTOCOL_VERSION);
}

void demo_agent_poll(void)
{
	agent_poll(&demo_agent);
}
