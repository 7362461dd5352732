/* Physical memory map, from the PVH start info. */
#ifndef DEMO_MEMMAP_H
#define DEMO_MEMMAP_H

#include "types.h"

#define MEMMAP_MAX_RAM_RANGES 32
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

#endif
