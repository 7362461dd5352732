/*
 * kinspect demo kernel: sets up real paging, GDT/TSS, IDT and a timer, then
 * idles so that the inspector has careful state to decode.
 */
#include "agent.h"
#include "agent_port.h"
#include "gdt.h"
#include "efi.h"
#include "fault_demo.h"
#include "idt.h"
#include "kprintf.h"
#include "lapic.h"
#include "layout.h"
#include "memmap.h"
#include "paging.h"
#include "pic.h"
#include "pvh.h"
#include "serial.h"
#include "smp.h"
#include "work.h"
#include "x86.h"

extern char boot_stack_bottom[], boot_stack_top[];
extern char df_stack_top[];
/* BOOT_LA57_*: what boot.S did about the boot option "la57" (layout.h). */
extern uint32_t boot_la57;

/* boot.S reads the command line at this offset, before there is any C. */
_Static_assert(offsetof(struct hvm_start_info, cmdline_paddr) == 0x18,
	       "boot.S: START_INFO_CMDLINE");

void kernel_main(uint32_t start_info_paddr);

/*
 * The boot option "lowhalf" (QEMU -append lowhalf) leaves the kernel as
 * many hobby kernels are after their 32-bit trampoline: running on its boot
 * stack and with its GDT, IDT and TSS at their physical addresses, which
 * only the identity map keeps reachable. `kinspect remap higher-half`
 * moves them up and drops the identity map (README, "Remapping").
 */
static bool cmdline_has(uint32_t start_info_paddr, const char *word)
{
	/* Before paging_init: the boot tables identity-map the first GiB. */
	const struct hvm_start_info *info = (const void *)(uint64_t)start_info_paddr;
	const char *s;

	if (!info->cmdline_paddr || info->cmdline_paddr >= IDENTITY_MAP_MAX)
		return false;
	s = (const char *)info->cmdline_paddr;
	for (; *s; s++) {
		unsigned i = 0;

		while (word[i] && s[i] == word[i])
			i++;
		if (!word[i] && (s[i] == 0 || s[i] == ' ') &&
		    (s == (const char *)info->cmdline_paddr || s[-1] == ' '))
			return true;
	}
	return false;
}

static void enter_low_half(void)
{
	agent_x86_load_descriptors(NULL, (uint64_t)&kernel_gdt - KERNEL_VMA,
				   (uint64_t)kernel_idt - KERNEL_VMA,
				   (uint64_t)&kernel_tss - KERNEL_VMA);
	/* RSP, RBP and the frame-pointer chain onto the identity alias of the stack. */
	agent_x86_rebase_stack(-(int64_t)KERNEL_VMA, (uint64_t)boot_stack_bottom,
			       (uint64_t)boot_stack_top);
}

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
	if (paging_levels == 5)
		kprintf("kinspect-demo: 5-level paging: kernel_pml5=%p, entry 511 kernel_pml4=%p\n",
			(void *)kernel_pml5, (void *)kernel_pml4);
	kprintf("kinspect-demo: kernel_pml4=%p boot_stack=%p-%p\n", (void *)kernel_pml4,
		(void *)boot_stack_bottom, (void *)boot_stack_top);
	kprintf("kinspect-demo: CR0=0x%lx CR3=0x%lx CR4=0x%lx EFER=0x%lx\n", read_cr0(),
		read_cr3(), read_cr4(), rdmsr(MSR_EFER));
}

void kernel_main(uint32_t start_info_paddr)
{
	/* efi_entry.S sets efi_boot_info_paddr: the UEFI loader's boot, not PVH. */
	bool uefi = efi_boot_info_paddr != 0;

	serial_init();
	if (uefi)
		kprintf("\nkinspect demo kernel (x86_64, UEFI entry, boot info at 0x%lx)\n",
			efi_boot_info_paddr);
	else
		kprintf("\nkinspect demo kernel (x86_64, PVH entry, start_info at 0x%x)\n",
			start_info_paddr);

	bool low_half = !uefi && cmdline_has(start_info_paddr, "lowhalf");
	/* "fault=NAME": fail on purpose once everything is set up (fault_demo.h). */
	int fault = -1;

	for (int i = 0; !uefi && i < FAULT_DEMO_COUNT; i++)
		if (cmdline_has(start_info_paddr, fault_demo_options[i]))
			fault = i;
	/* "noshootdown": the agent gets no TLB shootdown hook (remaps refused on SMP). */
	bool shootdown = uefi || !cmdline_has(start_info_paddr, "noshootdown");

	/*
	 * The boot option "la57" (5-level paging) was read by boot.S: CR4.LA57
	 * can only be set before long mode. The UEFI entry stays 4-level.
	 */
	if (boot_la57 == BOOT_LA57_ON)
		kprintf("kinspect-demo: la57: 5-level paging (CR4.LA57 set at the PVH entry)\n");
	else if (boot_la57 == BOOT_LA57_MISSING)
		kprintf("kinspect-demo: la57: the CPU has no LA57 (CPUID.7.0:ECX[16] clear), "
			"staying with 4-level paging\n");

	if (uefi)
		efi_memmap_init(efi_boot_info_paddr);
	else
		memmap_init(start_info_paddr);

	bool has_1g_pages = cpu_has_1g_pages();

	paging_init(has_1g_pages);
	gdt_init();
	idt_init();
	pic_init();
	if (uefi) {
		lapic_virtual_wire();
		efi_fpu_init();
	}
	pit_init(PIT_HZ);
	smp_init(uefi); /* QEMU -smp N: the APs, each with its own GDT, TSS and stacks */

	if (low_half) {
		enter_low_half();
		kprintf("kinspect-demo: lowhalf: stack, GDT, IDT and TSS at their physical "
			"addresses (only the identity map reaches them)\n");
	}
	print_state(has_1g_pages);
	demo_agent_init(shootdown);
	if (fault >= 0)
		fault_demo_run((enum fault_demo)fault);
	kprintf("kinspect-demo: ready\n");

	for (;;) {
		/* STI's one-instruction shadow makes sti; hlt race-free. */
		__asm__ volatile("sti; hlt" : : : "memory");
		demo_agent_poll(); /* requests and console input on COM1 */
		demo_work(demo_ticks);
	}
}
