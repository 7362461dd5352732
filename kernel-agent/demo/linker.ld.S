/*
 * Higher-half kernel: VMA = KERNEL_VMA + LMA, loaded at KERNEL_PHYS.
 * Preprocessed by the Makefile (cpp) so it shares layout.h with the code.
 *
 * Three PT_LOAD segments, each starting on a page boundary, so that
 * paging.c can give each one its own permissions with 4 KiB pages:
 *   text   R+X  .text
 *   rodata R    .rodata, .note.Xen, .eh_frame
 *   data   RW   .data, .bss (page tables, stacks)
 * The PT_NOTE segment covers .note.Xen for the PVH loader.
 */
#include "layout.h"

OUTPUT_FORMAT("elf64-x86-64")
OUTPUT_ARCH(i386:x86-64)
ENTRY(pvh_start32)

PHDRS
{
	text PT_LOAD FLAGS(5);
	rodata PT_LOAD FLAGS(4);
	data PT_LOAD FLAGS(6);
	note PT_NOTE FLAGS(4);
}

SECTIONS
{
	. = KERNEL_VMA + KERNEL_PHYS;
	__kernel_start = .;

	.text : AT(ADDR(.text) - KERNEL_VMA) {
		__text_start = .;
		*(.text.boot)
		*(.text .text.*)
	} :text
	. = ALIGN(PAGE_SIZE);
	__text_end = .;

	.rodata : AT(ADDR(.rodata) - KERNEL_VMA) {
		__rodata_start = .;
		*(.rodata .rodata.*)
	} :rodata
	.note.Xen : AT(ADDR(.note.Xen) - KERNEL_VMA) {
		KEEP(*(.note.Xen))
	} :rodata :note
	.eh_frame : AT(ADDR(.eh_frame) - KERNEL_VMA) {
		__eh_frame_start = .;
		KEEP(*(.eh_frame))
		__eh_frame_end = .;
	} :rodata
	. = ALIGN(PAGE_SIZE);
	__rodata_end = .;

	.data : AT(ADDR(.data) - KERNEL_VMA) {
		__data_start = .;
		*(.data .data.*)
	} :data

	. = ALIGN(PAGE_SIZE);
	.bss : AT(ADDR(.bss) - KERNEL_VMA) {
		__bss_start = .;
		__page_tables_start = .;
		*(.bss.pagetables)
		. = ALIGN(PAGE_SIZE);
		__page_tables_end = .;
		*(.bss.boot_pagetables)
		*(.bss.stack)
		. = ALIGN(PAGE_SIZE);
		*(.bss.ldt)	/* the LDT alone in its page (gdt.c) */
		. = ALIGN(PAGE_SIZE);
		*(.bss.probe)	/* the APs' probe page, alone in its page (smp.c) */
		. = ALIGN(PAGE_SIZE);
		*(.bss .bss.* COMMON)
		. = ALIGN(PAGE_SIZE);
		__bss_end = .;
	} :data
	__data_end = .;
	__kernel_end = .;

	/DISCARD/ : {
		*(.comment)
		*(.note.GNU-stack)
		*(.note.gnu.property)
		*(.note.gnu.build-id)
	}
}

/* The boot tables map the first GiB; paging.c expects page tables below 2 MiB. */
ASSERT(__kernel_end - KERNEL_VMA <= 0x40000000, "kernel image must fit in the first GiB")
ASSERT(__page_tables_end - KERNEL_VMA <= LARGE_PAGE_SIZE, "page-table pool must sit in the first 2 MiB")
