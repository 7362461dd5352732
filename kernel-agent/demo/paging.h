/* Final 4- or 5-level page tables (see layout.h for the address map). */
#ifndef DEMO_PAGING_H
#define DEMO_PAGING_H

#include "types.h"

/* Page-table entry bits (SDM Vol. 3A 4.5). */
#define PTE_P (1UL << 0)
#define PTE_RW (1UL << 1)
#define PTE_US (1UL << 2)
#define PTE_PWT (1UL << 3)
#define PTE_PCD (1UL << 4)
#define PTE_A (1UL << 5)
#define PTE_D (1UL << 6)
#define PTE_PS (1UL << 7)
#define PTE_G (1UL << 8)
#define PTE_NX (1UL << 63)
#define PTE_ADDR_MASK 0x000ffffffffff000UL

#define PT_ENTRIES 512
/* Page-table pages for everything but the PML4 and PML5 (bounds the direct map). */
#define PT_POOL_PAGES 64
#define DIRECT_MAP_MAX (32UL << 30)

/* The PML4 of the higher half: CR3's table with 4 levels, kernel_pml5[511] with 5. */
extern uint64_t kernel_pml4[PT_ENTRIES];
/* CR3's table with 5 levels (CR4.LA57); unused with 4. */
extern uint64_t kernel_pml5[PT_ENTRIES];
extern const uint64_t direct_map_base;
/* 4, or 5 when boot.S set CR4.LA57; set by paging_init. */
extern unsigned paging_levels;

/*
 * Builds the final tables, with as many levels as the CPU uses now
 * (CR4.LA57: boot.S chose), and switches CR3 to them, then sets CR4.PGE.
 * has_1g_pages selects a 1 GiB page for the MMIO window.
 */
void paging_init(bool has_1g_pages);

/* Boot options fault=pf-user and fault=seed-lowgdt only (fault_demo.c). */
void paging_map_user_page(uint64_t va, uint64_t pa);
void paging_drop_identity(void);

/*
 * The last entry paging_map_user_page wrote, as bitfields beside its raw value (an
 * anonymous union holding an anonymous struct): nothing reads it; a debugger prints
 * it (kinspect's `type demo_pte_view` reads its layout from this file's DWARF).
 */
struct demo_pte_view {
	uint64_t va;
	union {
		uint64_t raw;
		struct {
			uint64_t p : 1, rw : 1, us : 1, pwt : 1, pcd : 1, a : 1, d : 1, ps : 1, g : 1;
			uint64_t avl : 3;
			uint64_t frame : 40;
			uint64_t avl_high : 11;
			uint64_t nx : 1;
		};
	};
	uint8_t level : 3;
	uint8_t leaf : 1;
	char name[5];
};
extern struct demo_pte_view demo_pte_view;

#endif
