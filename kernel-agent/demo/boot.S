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
#define CR4_LA57 0x00001000
#define MSR_EFER 0xc0000080
#define EFER_LME 0x00000100
#define EFER_NXE 0x00000800

#define CPUID_EXT_LM (1 << 29)
#define CPUID_EXT_NX (1 << 20)
#define CPUID_7_ECX_LA57 (1 << 16)

/* struct hvm_start_info.cmdline_paddr (pvh.h; main.c asserts the offset). */
#define START_INFO_CMDLINE 0x18
/* "la57" as a little-endian dword. */
#define LA57_WORD 0x3735616c

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

	/*
	 * 5-level paging when the command line asks for it ("la57") and the
	 * CPU has it. CR4.LA57 cannot change in IA-32e mode, so it is now or
	 * never. The boot PML5 has two entries, both the boot PML4: entry 0
	 * for the identity map, 511 for KERNEL_VMA (0xffffffff80000000 is
	 * canonical with 57 bits too, sign-extended from bit 56).
	 */
	mov $CR4_PAE, %edi
	mov $PHYS(boot_pml4), %ebp
	call cmdline_has_la57
	test %eax, %eax
	jz 3f
	movl $BOOT_LA57_MISSING, PHYS(boot_la57)
	xor %eax, %eax
	cpuid
	cmp $7, %eax
	jb 3f
	mov $7, %eax
	xor %ecx, %ecx
	cpuid
	test $CPUID_7_ECX_LA57, %ecx
	jz 3f
	movl $BOOT_LA57_ON, PHYS(boot_la57)
	mov $(PHYS(boot_pml4) + (PTE_P | PTE_RW)), %eax
	mov %eax, PHYS(boot_pml5)
	mov %eax, PHYS(boot_pml5) + 511 * 8
	or $CR4_LA57, %edi
	mov $PHYS(boot_pml5), %ebp
3:
	mov %cr4, %eax
	or %edi, %eax
	mov %eax, %cr4

	mov %ebp, %cr3

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

/*
 * EAX = 1 if the PVH command line (ESI = hvm_start_info) holds the word
 * "la57" (space-separated, like main.c's cmdline_has), else 0. Paging is
 * off: physical addresses below 4 GiB are read directly. Clobbers ECX, EDX.
 */
	.type cmdline_has_la57, @function
cmdline_has_la57:
	xor %eax, %eax
	cmpl $0, START_INFO_CMDLINE + 4(%esi)
	jne 4f
	mov START_INFO_CMDLINE(%esi), %edx
	test %edx, %edx
	jz 4f
	mov $' ', %cl			/* the start counts as a separator */
1:	cmp $' ', %cl
	jne 2f
	cmpl $LA57_WORD, (%edx)		/* a NUL among these four bytes differs */
	jne 2f
	mov 4(%edx), %cl
	test %cl, %cl
	jz 3f
	cmp $' ', %cl
	je 3f
2:	mov (%edx), %cl
	inc %edx
	test %cl, %cl
	jnz 1b
	ret
3:	mov $1, %eax
4:	ret
	.size cmdline_has_la57, . - cmdline_has_la57

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

	/* BOOT_LA57_OFF, _ON or _MISSING (layout.h): what the entry did about "la57". */
	.globl boot_la57
	.type boot_la57, @object
boot_la57:
	.long BOOT_LA57_OFF
	.size boot_la57, 4

/* Temporary boot page tables; dead once paging.c switches CR3. */
	.section .bss.boot_pagetables, "aw", @nobits
	.p2align 12
boot_pml5:
	.skip PAGE_SIZE
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
