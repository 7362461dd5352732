/*
 * The final address space:
 *
 *   0x0000000000001000-ram (<=1G) low identity map left over from boot, RW,
 *                                 executable; 4 KiB pages in the first 2 MiB
 *                                 with page 0 and the page tables left out,
 *                                 2 MiB pages above
 *   DIRECT_MAP_BASE + phys        every 2 MiB chunk holding RAM, RW NX G,
 *                                 but for the UEFI runtime regions (4 KiB
 *                                 pages around them): memmap_direct_mapped()
 *   MMIO_WINDOW_BASE              physical 0xc0000000-0xffffffff, RW NX G
 *                                 PCD PWT, one 1 GiB page if supported
 *   KERNEL_VMA + phys             the kernel image, 4 KiB pages, G, with
 *                                 per-section permissions; stack guard
 *                                 pages left unmapped
 *
 * All tables live in .bss.pagetables inside the kernel image, so they are
 * reached through the kernel image mapping and the direct map only.
 *
 * With 5-level paging (boot option "la57", CR4.LA57 set by boot.S) the same
 * layout hangs under kernel_pml5: entry 511 is kernel_pml4, which holds the
 * higher half as with 4 levels (these addresses are canonical with 57 bits
 * too), and entry 0 a PML4 of its own for the identity map. Every mapping
 * keeps its 4-level address and none gains an alias.
 */
#include "paging.h"
#include "kprintf.h"
#include "layout.h"
#include "memmap.h"
#include "string.h"
#include "x86.h"

/* The index of va in the table at `level` (5 PML5, 4 PML4, 3 PDPT, 2 PD, 1 PT). */
#define TABLE_INDEX(va, level) (((va) >> (12 + 9 * ((level) - 1))) & 0x1ff)

#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((uint64_t)(a) - 1))
#define MIN(a, b) ((a) < (b) ? (a) : (b))

extern char __kernel_start[], __kernel_end[];
extern char __text_start[], __text_end[];
extern char __rodata_start[], __rodata_end[];
extern char __data_start[], __data_end[];
extern char __page_tables_start[], __page_tables_end[];
extern char boot_stack_guard[], df_stack_guard[];

uint64_t kernel_pml4[PT_ENTRIES] __aligned(PAGE_SIZE) __section(".bss.pagetables");
uint64_t kernel_pml5[PT_ENTRIES] __aligned(PAGE_SIZE) __section(".bss.pagetables");
static uint64_t pt_pool[PT_POOL_PAGES][PT_ENTRIES] __aligned(PAGE_SIZE)
	__section(".bss.pagetables");
static unsigned pt_pool_used;

const uint64_t direct_map_base = DIRECT_MAP_BASE;
struct demo_pte_view demo_pte_view = {.name = "pte"};
unsigned paging_levels = 4;

/* Page tables are in the kernel image: convert with the image offset. */
static uint64_t image_phys(const void *p)
{
	return (uint64_t)p - KERNEL_VMA;
}

static uint64_t *image_virt(uint64_t pa)
{
	return (uint64_t *)(pa + KERNEL_VMA);
}

static uint64_t *pt_alloc(void)
{
	if (pt_pool_used == PT_POOL_PAGES)
		panic("paging: page-table pool (%u pages) exhausted", PT_POOL_PAGES);
	uint64_t *table = pt_pool[pt_pool_used++];

	memset(table, 0, PAGE_SIZE);
	return table;
}

/* Non-leaf entries grant everything; the leaves decide (RW/US AND, NX OR). */
static uint64_t *next_table(uint64_t *table, unsigned index)
{
	uint64_t e = table[index];

	if (!(e & PTE_P)) {
		uint64_t *next = pt_alloc();

		table[index] = image_phys(next) | PTE_P | PTE_RW;
		return next;
	}
	if (e & PTE_PS)
		panic("paging: large page where a table was expected");
	return image_virt(e & PTE_ADDR_MASK);
}

static void map_page(uint64_t va, uint64_t pa, uint64_t size, uint64_t flags)
{
	unsigned leaf_level = size == HUGE_PAGE_SIZE ? 3 : size == LARGE_PAGE_SIZE ? 2 : 1;
	uint64_t *table = paging_levels == 5 ? kernel_pml5 : kernel_pml4;

	if ((va | pa) & (size - 1))
		panic("paging: 0x%lx -> 0x%lx not aligned to 0x%lx", va, pa, size);
	for (unsigned level = paging_levels; level > leaf_level; level--)
		table = next_table(table, TABLE_INDEX(va, level));
	if (leaf_level > 1)
		flags |= PTE_PS;

	uint64_t *slot = &table[TABLE_INDEX(va, leaf_level)];

	if (*slot & PTE_P)
		panic("paging: 0x%lx mapped twice", va);
	*slot = pa | flags;
}

static bool in_range(uint64_t x, const char *start, const char *end)
{
	return x >= (uint64_t)start && x < (uint64_t)end;
}

static void map_identity(void)
{
	uint64_t tables_start = image_phys(__page_tables_start);
	uint64_t tables_end = image_phys(__page_tables_end);
	uint64_t end = MIN(ALIGN_UP(ram_size, LARGE_PAGE_SIZE), (uint64_t)IDENTITY_MAP_MAX);

	/* Page 0 stays unmapped so that NULL dereferences fault. */
	for (uint64_t pa = PAGE_SIZE; pa < LARGE_PAGE_SIZE; pa += PAGE_SIZE) {
		if (pa >= tables_start && pa < tables_end)
			continue;
		map_page(pa, pa, PAGE_SIZE, PTE_P | PTE_RW);
	}
	for (uint64_t pa = LARGE_PAGE_SIZE; pa < end; pa += LARGE_PAGE_SIZE)
		map_page(pa, pa, LARGE_PAGE_SIZE, PTE_P | PTE_RW);
}

static void map_kernel_image(void)
{
	for (uint64_t va = (uint64_t)__kernel_start; va < (uint64_t)__kernel_end;
	     va += PAGE_SIZE) {
		uint64_t flags;

		if (va == (uint64_t)boot_stack_guard || va == (uint64_t)df_stack_guard)
			continue;
		if (in_range(va, __text_start, __text_end))
			flags = PTE_P | PTE_G;
		else if (in_range(va, __rodata_start, __rodata_end))
			flags = PTE_P | PTE_G | PTE_NX;
		else if (in_range(va, __data_start, __data_end))
			flags = PTE_P | PTE_RW | PTE_G | PTE_NX;
		else
			panic("paging: 0x%lx in no kernel section", va);
		map_page(va, image_phys((void *)va), PAGE_SIZE, flags);
	}
}

static void map_direct(void)
{
	const uint64_t flags = PTE_P | PTE_RW | PTE_G | PTE_NX;
	uint64_t end = ALIGN_UP(ram_size, LARGE_PAGE_SIZE);

	if (end > DIRECT_MAP_MAX) {
		kprintf("paging: direct map limited to %lu GiB\n", DIRECT_MAP_MAX >> 30);
		end = DIRECT_MAP_MAX;
	}
	for (uint64_t pa = 0; pa < end; pa += LARGE_PAGE_SIZE) {
		if (!memmap_overlaps_ram(pa, pa + LARGE_PAGE_SIZE))
			continue;
		if (!memmap_overlaps_excluded(pa, pa + LARGE_PAGE_SIZE)) {
			map_page(DIRECT_MAP_BASE + pa, pa, LARGE_PAGE_SIZE, flags);
			continue;
		}
		/* A chunk with UEFI runtime pages: 4 KiB pages for the rest of it. */
		for (uint64_t page = pa; page < pa + LARGE_PAGE_SIZE; page += PAGE_SIZE)
			if (memmap_direct_mapped(page))
				map_page(DIRECT_MAP_BASE + page, page, PAGE_SIZE, flags);
	}
}

static void map_mmio(bool has_1g_pages)
{
	const uint64_t flags = PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_G | PTE_NX;

	if (has_1g_pages) {
		map_page(MMIO_WINDOW_BASE, MMIO_PHYS, HUGE_PAGE_SIZE, flags);
		return;
	}
	for (uint64_t off = 0; off < MMIO_SIZE; off += LARGE_PAGE_SIZE)
		map_page(MMIO_WINDOW_BASE + off, MMIO_PHYS + off, LARGE_PAGE_SIZE, flags);
}

void paging_init(bool has_1g_pages)
{
	if (read_cr4() & CR4_LA57) {
		paging_levels = 5;
		/* The whole higher half is PML5 entry 511; the identity map gets entry 0. */
		kernel_pml5[TABLE_INDEX(KERNEL_VMA, 5)] = image_phys(kernel_pml4) | PTE_P | PTE_RW;
	}
	map_identity();
	map_direct();
	map_mmio(has_1g_pages);
	map_kernel_image();

	write_cr3(image_phys(paging_levels == 5 ? kernel_pml5 : kernel_pml4));
	/* Setting PGE also flushes the TLB, global entries included. */
	write_cr4(read_cr4() | CR4_PGE);

	if (paging_levels == 5)
		kprintf("paging: 5-level (CR4.LA57), CR3=0x%lx, %u of %u page-table pages used\n",
			read_cr3(), pt_pool_used + 2, PT_POOL_PAGES + 2);
	else
		kprintf("paging: CR3=0x%lx, %u of %u page-table pages used\n", read_cr3(),
			pt_pool_used + 1, PT_POOL_PAGES + 1);
}

/* For the boot option fault=pf-user: a 4 KiB page with US at every level, read and execute. */
void paging_map_user_page(uint64_t va, uint64_t pa)
{
	uint64_t *table = paging_levels == 5 ? kernel_pml5 : kernel_pml4;

	for (unsigned level = paging_levels; level > 1; level--) {
		unsigned index = TABLE_INDEX(va, level);
		uint64_t *next = next_table(table, index);

		table[index] |= PTE_US;
		table = next;
	}
	map_page(va, pa, PAGE_SIZE, PTE_P | PTE_US);
	__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
	demo_pte_view.va = va;
	demo_pte_view.raw = (pa & PTE_ADDR_MASK) | PTE_P | PTE_US;
	demo_pte_view.level = 1;
	demo_pte_view.leaf = 1;
}

/* For the boot option fault=seed-lowgdt: the low identity map goes (its entry 0 cleared). */
void paging_drop_identity(void)
{
	if (paging_levels == 5)
		kernel_pml5[0] = 0;
	else
		kernel_pml4[0] = 0;
	/* The identity map's entries are not global: reloading CR3 flushes them. */
	write_cr3(read_cr3());
}
