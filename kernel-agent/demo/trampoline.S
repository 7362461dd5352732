/*
 * The application processors' way into long mode (smp.c). An AP starts in
 * real mode at the SIPI's page (AP_TRAMPOLINE_PHYS, below 1 MiB); smp.c
 * copies these bytes there and fills in the parameter block at its end
 * before each INIT-SIPI-SIPI. Every address below is the copy's physical
 * address: AP_TRAMPOLINE_PHYS + (label - ap_trampoline_start), a constant.
 *
 * real mode -> 32-bit protected mode (this page's own GDT) -> CR4 (PAE, and
 * LA57 when the BSP runs 5-level), CR3 = the kernel's top table, EFER (LME,
 * NXE) -> CR0 (PG, WP) -> 64-bit code -> the AP's stack in the higher half,
 * ap_main(cpu). The kernel's tables identity-map this page (the boot
 * identity map), so the instruction after MOV CR0 is still reachable.
 */
#include "layout.h"

#define TR(label) (AP_TRAMPOLINE_PHYS + ((label) - ap_trampoline_start))

	.section .rodata
	.p2align 12
	.globl ap_trampoline_start, ap_trampoline_end, ap_trampoline_params
	.code16
ap_trampoline_start:
	cli
	cld
	xorw %ax, %ax
	movw %ax, %ds
	lgdtl TR(tr_gdtr)
	movl %cr0, %eax
	orl $1, %eax			/* CR0.PE */
	movl %eax, %cr0
	ljmpl $0x08, $TR(tr_protected)

	.code32
tr_protected:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl TR(tr_cr4), %eax
	movl %eax, %cr4
	movl TR(tr_cr3), %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx		/* IA32_EFER */
	movl TR(tr_efer), %eax
	xorl %edx, %edx
	wrmsr
	movl TR(tr_cr0), %eax
	movl %eax, %cr0			/* PG: long mode is active from here */
	ljmpl $0x18, $TR(tr_long)

	.code64
tr_long:
	xorl %eax, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movq TR(tr_stack), %rsp
	movq TR(tr_cpu), %rdi
	movq TR(tr_entry), %rax
	xorl %ebp, %ebp			/* the outermost frame */
	pushq $0			/* a null return address ends the unwind */
	jmp *%rax

	.p2align 3
tr_gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* 0x08: 32-bit code, flat */
	.quad 0x00cf92000000ffff	/* 0x10: data, flat */
	.quad 0x00af9a000000ffff	/* 0x18: 64-bit code */
tr_gdtr:
	.word 4 * 8 - 1
	.long TR(tr_gdt)

	.p2align 3
ap_trampoline_params:			/* struct ap_trampoline_params (smp.h) */
tr_cr0:	.long 0
tr_cr3:	.long 0
tr_cr4:	.long 0
tr_efer: .long 0
tr_stack: .quad 0
tr_cpu:	.quad 0
tr_entry: .quad 0
ap_trampoline_end:

	.section .note.GNU-stack, "", @progbits
