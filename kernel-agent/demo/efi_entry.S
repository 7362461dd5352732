/*
 * UEFI entry, beside the PVH one (boot.S). The loader (uefi/loader.c) has
 * copied this ELF's segments to their physical addresses, exited boot
 * services and calls efi_entry64 (SysV: RDI = physical address of struct
 * efi_boot_info) in 64-bit mode, on the firmware's page tables (an identity
 * map, read-only) and its GDT (in a runtime region).
 *
 * We run at the physical address until our own tables are loaded: code
 * here is reached RIP-relative or through PHYS(). Then the same higher-half
 * kernel runs: kernel_main sees efi_boot_info_paddr != 0.
 */
#include "layout.h"

#define PHYS(sym) ((sym) - KERNEL_VMA)

#define PTE_P 0x001
#define PTE_RW 0x002
#define PTE_PS 0x080

#define CR0_WP 0x00010000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_NXE 0x00000800

	.section .text.boot, "ax", @progbits
	.code64
	.globl efi_entry64
	.type efi_entry64, @function
efi_entry64:
	cli
	cld
	mov %rdi, %r12

	/* Our GDT first: the firmware's sits in a runtime region. */
	lgdt efi_gdt_ptr_phys(%rip)
	pushq $GDT_KERNEL_CODE
	lea 1f(%rip), %rax
	pushq %rax
	lretq
1:	mov $GDT_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs

	/* Zero .bss (the loader did too; the PVH path does it here as well). */
	mov $PHYS(__bss_start), %edi
	mov $PHYS(__bss_end), %ecx
	sub %edi, %ecx
	xor %eax, %eax
	rep stosb

	mov %r12, PHYS(efi_boot_info_paddr)
	mov $PHYS(boot_stack_top), %esp

	/*
	 * Our own tables (the firmware's are read-only and in BootServicesData):
	 * the first GiB with 2 MiB pages, identity and at KERNEL_VMA, as boot.S
	 * builds them. paging.c replaces them with the final tables.
	 */
	mov $(PHYS(efi_boot_pdpt_low) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(efi_boot_pml4)
	mov $(PHYS(efi_boot_pdpt_high) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(efi_boot_pml4) + 511 * 8
	mov $(PHYS(efi_boot_pd) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(efi_boot_pdpt_low)
	mov %eax, PHYS(efi_boot_pdpt_high) + 510 * 8

	mov $PHYS(efi_boot_pd), %edi
	mov $(PTE_P | PTE_RW | PTE_PS), %eax
	mov $512, %ecx
1:	mov %rax, (%rdi)
	add $LARGE_PAGE_SIZE, %rax
	add $8, %rdi
	loop 1b

	mov %cr4, %rax
	or $CR4_PAE, %eax
	mov %rax, %cr4
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_NXE, %eax
	wrmsr
	mov %cr0, %rax
	or $CR0_WP, %eax
	mov %rax, %cr0

	mov $PHYS(efi_boot_pml4), %eax
	mov %rax, %cr3

	movabs $efi_start64, %rax
	jmp *%rax
	.size efi_entry64, . - efi_entry64

	.text
	.type efi_start64, @function
efi_start64:
	.cfi_startproc
	/* The outermost frame: debuggers stop unwinding here. */
	.cfi_undefined rip
	lgdt efi_gdt_ptr(%rip)
	mov $boot_stack_top, %rsp
	xor %ebp, %ebp
	xor %edi, %edi		/* no PVH start info: kernel_main reads efi_boot_info_paddr */
	call kernel_main
1:	cli
	hlt
	jmp 1b
	.cfi_endproc
	.size efi_start64, . - efi_start64

	.section .rodata
	/* Accessed bits preset so the CPU never writes to this read-only GDT. */
	.p2align 3
efi_gdt:
	.quad 0
	.quad 0x00af9b000000ffff	/* 0x08: kernel code, 64-bit (L=1) */
	.quad 0x00cf93000000ffff	/* 0x10: kernel data */
efi_gdt_end:

	.p2align 3
efi_gdt_ptr_phys:
	.word efi_gdt_end - efi_gdt - 1
	.quad PHYS(efi_gdt)

	.p2align 3
efi_gdt_ptr:
	.word efi_gdt_end - efi_gdt - 1
	.quad efi_gdt

	.data
	.p2align 3
	.globl efi_boot_info_paddr
	.type efi_boot_info_paddr, @object
efi_boot_info_paddr:
	.quad 0
	.size efi_boot_info_paddr, 8

	.section .bss.boot_pagetables, "aw", @nobits
	.p2align 12
efi_boot_pml4:
	.skip PAGE_SIZE
efi_boot_pdpt_low:
	.skip PAGE_SIZE
efi_boot_pdpt_high:
	.skip PAGE_SIZE
efi_boot_pd:
	.skip PAGE_SIZE

	.section .note.GNU-stack, "", @progbits
