/*
 * PVH boot ABI (Xen public header arch-x86/hvm/start_info.h): the loader
 * enters the 32-bit entry point named by the XEN_ELFNOTE_PHYS32_ENTRY note
 * with EBX holding the physical address of struct hvm_start_info.
 */
#ifndef DEMO_PVH_H
#define DEMO_PVH_H

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define XEN_HVM_START_MAGIC_VALUE 0x336ec578

#ifndef __ASSEMBLER__
#include "types.h"

struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	/* The fields below are present from version 1 on. */
	uint64_t memmap_paddr;
	uint32_t memmap_entries;
	uint32_t reserved;
} __packed;

_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info layout");
_Static_assert(offsetof(struct hvm_start_info, rsdp_paddr) == 0x20,
	       "hvm_start_info.rsdp_paddr offset");
_Static_assert(offsetof(struct hvm_start_info, memmap_paddr) == 0x28,
	       "hvm_start_info.memmap_paddr offset");
_Static_assert(offsetof(struct hvm_start_info, memmap_entries) == 0x30,
	       "hvm_start_info.memmap_entries offset");

struct hvm_memmap_table_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
} __packed;

_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24,
	       "hvm_memmap_table_entry layout");

#define XEN_HVM_MEMMAP_TYPE_RAM 1
#define XEN_HVM_MEMMAP_TYPE_RESERVED 2
#define XEN_HVM_MEMMAP_TYPE_ACPI 3
#define XEN_HVM_MEMMAP_TYPE_NVS 4
#define XEN_HVM_MEMMAP_TYPE_UNUSABLE 5
#define XEN_HVM_MEMMAP_TYPE_DISABLED 6
#define XEN_HVM_MEMMAP_TYPE_PMEM 7

/* Set by boot.S: EBX at the PVH entry. */
extern uint32_t pvh_start_info_paddr;
#endif

#endif
