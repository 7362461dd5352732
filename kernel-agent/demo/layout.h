/*
 * Virtual memory layout of the demo kernel. Shared by C, assembly and the
 * linker script, so it holds only plain constants.
 */
#ifndef DEMO_LAYOUT_H
#define DEMO_LAYOUT_H

/* The kernel image is linked at KERNEL_VMA + physical address. */
#define KERNEL_VMA 0xffffffff80000000
#define KERNEL_PHYS 0x100000

/* Direct map of all RAM, 2 MiB pages (Linux's __PAGE_OFFSET with 4 levels). */
#define DIRECT_MAP_BASE 0xffff888000000000

/* MMIO window: physical MMIO_PHYS..MMIO_PHYS+MMIO_SIZE, one 1 GiB page. */
#define MMIO_WINDOW_BASE 0xffffc90000000000
#define MMIO_PHYS 0xc0000000
#define MMIO_SIZE 0x40000000

/* Low identity map left over from boot, at most this much. */
#define IDENTITY_MAP_MAX 0x40000000

#define PAGE_SIZE 0x1000
#define LARGE_PAGE_SIZE 0x200000
#define HUGE_PAGE_SIZE 0x40000000

#define BOOT_STACK_SIZE 0x4000
#define DF_STACK_SIZE 0x4000

/*
 * Paging mode chosen at the PVH entry (boot.S, boot_la57): CR4.LA57 can be
 * set only while paging is off, so the boot option "la57" is read there.
 */
#define BOOT_LA57_OFF 0		/* not asked for: 4-level paging */
#define BOOT_LA57_ON 1		/* 5-level paging, CR4.LA57 set */
#define BOOT_LA57_MISSING 2	/* asked for, but CPUID.7.0:ECX.LA57[16] is 0 */

/*
 * SMP (smp.c): at most MAX_CPUS CPUs; the APs start in real mode at
 * AP_TRAMPOLINE_PHYS (SIPI vector AP_TRAMPOLINE_PHYS >> 12), each gets an
 * AP_STACK_SIZE kernel stack and a DF_STACK_SIZE #DF stack.
 */
#define MAX_CPUS 8
#define AP_TRAMPOLINE_PHYS 0x8000
#define AP_STACK_SIZE 0x4000

/*
 * Local APIC vectors (idt.c): the APs' timer, the agent's TLB shootdown and
 * hold IPIs (smp.c), and the spurious vector.
 */
#define VECTOR_LAPIC_TIMER 0xf0
#define VECTOR_SHOOTDOWN 0xf1
#define VECTOR_HOLD 0xf2
#define VECTOR_LAPIC_SPURIOUS 0xff

/* Segment selectors of the kernel GDT (gdt.c). */
#define GDT_KERNEL_CODE 0x08
#define GDT_KERNEL_DATA 0x10
#define GDT_USER_DATA 0x18
#define GDT_USER_CODE 0x20
#define GDT_TSS 0x28

#endif
