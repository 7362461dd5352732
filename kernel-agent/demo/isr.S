/*
 * Interrupt entry stubs. Every stub leaves the same frame (struct
 * interrupt_frame in idt.h): the CPU's iret frame, an error code (a dummy 0
 * where the CPU pushes none), the vector, then the general registers.
 */
#include "layout.h"

	.macro STUB_NOERR vector
	.p2align 4
isr_stub_\vector:
	pushq $0
	pushq $\vector
	jmp interrupt_common
	.endm

	.macro STUB_ERR vector
	.p2align 4
isr_stub_\vector:
	pushq $\vector
	jmp interrupt_common
	.endm

	.macro SAVE reg
	pushq %\reg
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset \reg, 0
	.endm

	.macro RESTORE reg
	popq %\reg
	.cfi_adjust_cfa_offset -8
	.cfi_restore \reg
	.endm

	.text
/* Exceptions that push an error code: #DF #TS #NP #SS #GP #PF #AC #CP #VC #SX. */
	STUB_NOERR 0
	STUB_NOERR 1
	STUB_NOERR 2
	STUB_NOERR 3
	STUB_NOERR 4
	STUB_NOERR 5
	STUB_NOERR 6
	STUB_NOERR 7
	STUB_ERR 8
	STUB_NOERR 9
	STUB_ERR 10
	STUB_ERR 11
	STUB_ERR 12
	STUB_ERR 13
	STUB_ERR 14
	STUB_NOERR 15
	STUB_NOERR 16
	STUB_ERR 17
	STUB_NOERR 18
	STUB_NOERR 19
	STUB_NOERR 20
	STUB_ERR 21
	STUB_NOERR 22
	STUB_NOERR 23
	STUB_NOERR 24
	STUB_NOERR 25
	STUB_NOERR 26
	STUB_NOERR 27
	STUB_NOERR 28
	STUB_ERR 29
	STUB_ERR 30
	STUB_NOERR 31
/* 8259 IRQs 0-15, remapped to vectors 32-47. */
	.irp vector, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	STUB_NOERR \vector
	.endr

/* The local APIC's vectors (smp.c): the APs' timer and the spurious vector. */
	.globl isr_stub_240, isr_stub_241, isr_stub_242, isr_stub_255
	STUB_NOERR 240
	STUB_NOERR 241
	STUB_NOERR 242
	STUB_NOERR 255

/*
 * The CFI describes the interrupted context so that a debugger can unwind
 * from a handler back into the code that was interrupted.
 */
	.p2align 4
	.type interrupt_common, @function
interrupt_common:
	.cfi_startproc simple
	.cfi_signal_frame
	/* vector, error code, RIP, CS, RFLAGS, RSP, SS */
	.cfi_def_cfa rsp, 7 * 8
	.cfi_offset rip, -5 * 8
	.cfi_offset rsp, -2 * 8
	SAVE rax
	SAVE rbx
	SAVE rcx
	SAVE rdx
	SAVE rsi
	SAVE rdi
	SAVE rbp
	SAVE r8
	SAVE r9
	SAVE r10
	SAVE r11
	SAVE r12
	SAVE r13
	SAVE r14
	SAVE r15
	cld
	/* The CPU aligned RSP to 16 before its frame; 22 quadwords keep it so. */
	mov %rsp, %rdi
	call interrupt_dispatch
	RESTORE r15
	RESTORE r14
	RESTORE r13
	RESTORE r12
	RESTORE r11
	RESTORE r10
	RESTORE r9
	RESTORE r8
	RESTORE rbp
	RESTORE rdi
	RESTORE rsi
	RESTORE rdx
	RESTORE rcx
	RESTORE rbx
	RESTORE rax
	add $16, %rsp
	.cfi_adjust_cfa_offset -16
	iretq
	.cfi_endproc
	.size interrupt_common, . - interrupt_common

	.section .rodata
	.p2align 3
	.globl isr_stub_table
	.type isr_stub_table, @object
isr_stub_table:
	.irp vector, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
	.quad isr_stub_\vector
	.endr
	.size isr_stub_table, . - isr_stub_table

	.section .note.GNU-stack, "", @progbits
