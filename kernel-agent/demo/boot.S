/*
 * PVH entry. The loader (QEMU's pvh option ROM, Xen, Firecracker...) jumps
 * to pvh_start32 in 32-bit protected mode with paging off, flat 4 GiB
 * segments and EBX = physical address of struct hvm_start_info.
 *
 * We run at the physical load address until paging is on, so every symbol
 * reference before the jump to start64 goes through PHYS().
 */
#include "layout.h"
#include "pvh.h"

#define PHYS(sym) ((sym) - KERNEL_VMA)

#define PTE_P 0x001
#define PTE_RW 0x002
#define PTE_PS 0x080

#define CR0_PE 0x00000001
#define CR0_WP 0x00010000
#define CR0_PG 0x80000000
#define CR4_PAE 0x00000020
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100
#define EFER_NXE 0x00000800

#define CPUID_EXT_LM (1 << 29)
#define CPUID_EXT_NX (1 << 20)

/*
 * XEN_ELFNOTE_PHYS32_ENTRY: name "Xen", value the 32-bit physical entry.
 * QEMU aligns the name size up to the PT_NOTE segment's p_align before
 * reading the value, so the section must stay 4-aligned.
 */
	.section .note.Xen, "a", @note
	.p2align 2
	.long 2f - 1f			/* namesz */
	.long 4f - 3f			/* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY	/* type */
1:	.asciz "Xen"
2:	.p2align 2
3:	.quad PHYS(pvh_start32)
4:	.p2align 2

	.section .text.boot, "ax", @progbits
	.code32
	.globl pvh_start32
	.type pvh_start32, @function
pvh_start32:
	cli
	cld
	mov %ebx, %esi

	/* Zero .bss (page tables, stacks) rather than trust the loader to. */
	mov $PHYS(__bss_start), %edi
	mov $PHYS(__bss_end), %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl

	mov %esi, PHYS(pvh_start_info_paddr)
	mov $PHYS(boot_stack_top), %esp

	/* Long mode and NX are required: CPUID.80000001h:EDX. */
	mov $0x80000000, %eax
	cpuid
	cmp $0x80000001, %eax
	jb no_long_mode
	mov $0x80000001, %eax
	cpuid
	test $CPUID_EXT_LM, %edx
	jz no_long_mode
	test $CPUID_EXT_NX, %edx
	jz no_long_mode

	/*
	 * Temporary tables: the first GiB with 2 MiB pages, both identity
	 * mapped (we are executing there) and at KERNEL_VMA (where we are
	 * linked). paging.c replaces them with the final tables.
	 */
	mov $(PHYS(boot_pdpt_low) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(boot_pml4)
	mov $(PHYS(boot_pdpt_high) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(boot_pml4) + 511 * 8
	mov $(PHYS(boot_pd) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(boot_pdpt_low)
	mov %eax, PHYS(boot_pdpt_high) + 510 * 8

	mov $PHYS(boot_pd), %edi
	mov $(PTE_P | PTE_RW | PTE_PS), %eax
	mov $512, %ecx
1:	mov %eax, (%edi)
	movl $0, 4(%edi)
	add $LARGE_PAGE_SIZE, %eax
	add $8, %edi
	loop 1b

	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4

	mov $PHYS(boot_pml4), %eax
	mov %eax, %cr3

	mov $MSR_EFER, %ecx
	rdmsr
	or $(EFER_LME | EFER_NXE), %eax
	wrmsr

	mov %cr0, %eax
	or $(CR0_PG | CR0_WP | CR0_PE), %eax
	mov %eax, %cr0

	/* Now in compatibility mode; a far jump to a L=1 segment enters 64-bit. */
	lgdt PHYS(boot_gdt_ptr32)
	ljmp $GDT_KERNEL_CODE, $PHYS(start64_low)

no_long_mode:
	mov $PHYS(no_long_mode_msg), %esi
	mov $0x3f8, %dx
1:	lodsb
	test %al, %al
	jz 2f
	out %al, (%dx)
	jmp 1b
2:	cli
	hlt
	jmp 2b
	.size pvh_start32, . - pvh_start32

	.code64
start64_low:
	/* Still at the physical address; move to the higher half. */
	movabs $start64, %rax
	jmp *%rax

	.text
	.globl start64
	.type start64, @function
start64:
	.cfi_startproc
	/* The outermost frame: debuggers stop unwinding here. */
	.cfi_undefined rip
	lgdt boot_gdt_ptr64(%rip)
	mov $GDT_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	xor %eax, %eax
	mov %eax, %fs
	mov %eax, %gs

	mov $boot_stack_top, %rsp
	xor %ebp, %ebp
	mov pvh_start_info_paddr(%rip), %edi
	call kernel_main
1:	cli
	hlt
	jmp 1b
	.cfi_endproc
	.size start64, . - start64

	.section .rodata
no_long_mode_msg:
	.asciz "kinspect-demo: CPU lacks long mode or NX, halting\r\n"

	/* Accessed bits preset so the CPU never writes to this read-only GDT. */
	.p2align 3
boot_gdt:
	.quad 0
	.quad 0x00af9b000000ffff	/* 0x08: kernel code, 64-bit (L=1) */
	.quad 0x00cf93000000ffff	/* 0x10: kernel data */
boot_gdt_end:

boot_gdt_ptr32:
	.word boot_gdt_end - boot_gdt - 1
	.long PHYS(boot_gdt)

	.p2align 3
boot_gdt_ptr64:
	.word boot_gdt_end - boot_gdt - 1
	.quad boot_gdt

	.data
	.p2align 2
	.globl pvh_start_info_paddr
	.type pvh_start_info_paddr, @object
pvh_start_info_paddr:
	.long 0
	.size pvh_start_info_paddr, 4

/* Temporary boot page tables; dead once paging.c switches CR3. */
	.section .bss.boot_pagetables, "aw", @nobits
	.p2align 12
boot_pml4:
	.skip PAGE_SIZE
boot_pdpt_low:
	.skip PAGE_SIZE
boot_pdpt_high:
	.skip PAGE_SIZE
boot_pd:
	.skip PAGE_SIZE

/*
 * Stacks, each with a guard page directly below it that paging.c leaves
 * unmapped in the kernel image mapping.
 */
	.section .bss.stack, "aw", @nobits
	.p2align 12
	.globl boot_stack_guard
	.type boot_stack_guard, @object
boot_stack_guard:
	.skip PAGE_SIZE
	.size boot_stack_guard, PAGE_SIZE

	.globl boot_stack_bottom
	.type boot_stack_bottom, @object
boot_stack_bottom:
	.skip BOOT_STACK_SIZE
	.size boot_stack_bottom, BOOT_STACK_SIZE
	.globl boot_stack_top
boot_stack_top:

	.globl df_stack_guard
	.type df_stack_guard, @object
df_stack_guard:
	.skip PAGE_SIZE
	.size df_stack_guard, PAGE_SIZE

	.globl df_stack_bottom
	.type df_stack_bottom, @object
df_stack_bottom:
	.skip DF_STACK_SIZE
	.size df_stack_bottom, DF_STACK_SIZE
	.globl df_stack_top
df_stack_top:

	.section .note.GNU-stack, "", @progbits
