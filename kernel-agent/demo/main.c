/*
 * kinspect demo kernel: sets up real paging, GDT/TSS, IDT and a timer, then
 * idles so that the inspector has careful state to decode.
 */
#include "agent_port.h"
#include "gdt.h"
#include "idt.h"
#include "kprintf.h"
#include "layout.h"
#include "memmap.h"
#include "paging.h"
#include "pic.h"
#include "serial.h"
#include "work.h"
#include "x86.h"

extern char boot_stack_bottom[], boot_stack_top[];
extern char df_stack_top[];

void kernel_main(uint32_t start_info_paddr);

static bool cpu_has_1g_pages(void)
{
	uint32_t eax, ebx, ecx, edx;

	cpuid(0x80000000, &eax, &ebx, &ecx, &edx);
	if (eax < 0x80000001)
		return false;
	cpuid(0x80000001, &eax, &ebx, &ecx, &edx);
	return edx & CPUID_80000001_EDX_PAGE1GB;
}

static void print_state(bool has_1g_pages)
{
	kprintf("kinspect-demo: ram_size=0x%lx (end of RAM), %lu MiB usable\n", ram_size,
		memmap_usable_bytes() >> 20);
	kprintf("kinspect-demo: direct_map_base=0x%lx\n", direct_map_base);
	kprintf("kinspect-demo: mmio window 0x%lx -> phys 0x%lx (%s)\n",
		(uint64_t)MMIO_WINDOW_BASE, (uint64_t)MMIO_PHYS,
		has_1g_pages ? "1 GiB page" : "2 MiB pages, no pdpe1gb");
	kprintf("kinspect-demo: kernel_pml4=%p boot_stack=%p-%p\n", (void *)kernel_pml4,
		(void *)boot_stack_bottom, (void *)boot_stack_top);
	kprintf("kinspect-demo: CR0=0x%lx CR3=0x%lx CR4=0x%lx EFER=0x%lx\n", read_cr0(),
		read_cr3(), read_cr4(), rdmsr(MSR_EFER));
}

void kernel_main(uint32_t start_info_paddr)
{
	serial_init();
	kprintf("\nkinspect demo kernel (x86_64, PVH entry, start_info at 0x%x)\n",
		start_info_paddr);

	memmap_init(start_info_paddr);

	bool has_1g_pages = cpu_has_1g_pages();

	paging_init(has_1g_pages);
	gdt_init();
	idt_init();
	pic_init();
	pit_init(PIT_HZ);

	print_state(has_1g_pages);
	demo_agent_init();
	kprintf("kinspect-demo: ready\n");

	for (;;) {
		/* STI's one-instruction shadow makes sti; hlt race-free. */
		__asm__ volatile("sti; hlt" : : : "memory");
		demo_agent_poll(); /* requests and console input on COM1 */
		demo_work(demo_ticks);
	}
}
