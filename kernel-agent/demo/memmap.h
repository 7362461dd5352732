/* Physical memory map, from the PVH start info. */
#ifndef DEMO_MEMMAP_H
#define DEMO_MEMMAP_H

#include "types.h"

#define MEMMAP_MAX_RAM_RANGES 32
#define MEMMAP_MAX_EXCLUDED 64
#define RAM_SIZE_FALLBACK (128UL << 20)

/* End of the highest usable-RAM range (bytes); the fallback if unknown. */
extern uint64_t ram_size;

/*
 * Reads the memory map from the hvm_start_info at start_info_paddr. Must run
 * while the boot page tables still identity map the first GiB.
 */
void memmap_init(uint32_t start_info_paddr);
/* Another boot path's map (efi.c): reset, add each RAM range in address order, finish. */
void memmap_reset(void);
void memmap_add_ram(uint64_t start, uint64_t end);
void memmap_finish(void);
/* Sum of the usable-RAM ranges (bytes). */
uint64_t memmap_usable_bytes(void);
/* True if [start, end) overlaps usable RAM. */
bool memmap_overlaps_ram(uint64_t start, uint64_t end);
/*
 * RAM the direct map leaves out (efi.c: the UEFI runtime regions, which
 * only the firmware's own mappings should reach, as in Linux). Page-aligned.
 */
void memmap_exclude(uint64_t start, uint64_t end);
/* True if [start, end) overlaps an excluded range. */
bool memmap_overlaps_excluded(uint64_t start, uint64_t end);
/*
 * True if the direct map maps the page of pa: a 2 MiB chunk holding RAM,
 * below DIRECT_MAP_MAX, and not excluded. paging.c builds the direct map
 * from it and agent_port.c reads physical memory only where it holds.
 */
bool memmap_direct_mapped(uint64_t pa);

#endif
