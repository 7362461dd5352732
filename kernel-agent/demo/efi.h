/* The UEFI boot path: the firmware's memory map, kept for the inspector. */
#ifndef DEMO_EFI_H
#define DEMO_EFI_H

#include "types.h"

#define EFI_MEMMAP_MAX 0x4000 /* bytes: 341 descriptors of 48 bytes */

/* UEFI 2.10, 7.2: EFI_MEMORY_DESCRIPTOR (the stride is efi_memmap_desc_size). */
struct efi_memory_descriptor {
	uint32_t type;
	uint32_t pad;
	uint64_t physical_start;
	uint64_t virtual_start;
	uint64_t number_of_pages;
	uint64_t attribute;
};
_Static_assert(sizeof(struct efi_memory_descriptor) == 40, "EFI_MEMORY_DESCRIPTOR layout");

#define EFI_RESERVED_MEMORY_TYPE 0
#define EFI_LOADER_CODE 1
#define EFI_LOADER_DATA 2
#define EFI_BOOT_SERVICES_CODE 3
#define EFI_BOOT_SERVICES_DATA 4
#define EFI_RUNTIME_SERVICES_CODE 5
#define EFI_RUNTIME_SERVICES_DATA 6
#define EFI_CONVENTIONAL_MEMORY 7
#define EFI_UNUSABLE_MEMORY 8
#define EFI_ACPI_RECLAIM_MEMORY 9
#define EFI_ACPI_MEMORY_NVS 10
#define EFI_MEMORY_MAPPED_IO 11
#define EFI_MEMORY_MAPPED_IO_PORT_SPACE 12
#define EFI_PAL_CODE 13
#define EFI_PERSISTENT_MEMORY 14

#define EFI_MEMORY_RUNTIME (1ULL << 63)

/* Physical address of the loader's struct efi_boot_info; 0 on a PVH boot (efi_entry.S). */
extern uint64_t efi_boot_info_paddr;

/* The map as the loader got it at ExitBootServices, for the inspector to read by symbol. */
extern uint8_t efi_memmap[EFI_MEMMAP_MAX];
extern uint64_t efi_memmap_size;
extern uint64_t efi_memmap_desc_size;
extern uint32_t efi_memmap_desc_version;
extern uint64_t efi_system_table_paddr;
/* EFI_MEMORY_ATTRIBUTES_TABLE as the loader copied it (header + entries); size 0 if none. */
#define EFI_MEMATTR_MAX 0x2000
extern uint8_t efi_memattr[EFI_MEMATTR_MAX];
extern uint64_t efi_memattr_size;

/*
 * Copies the loader's memory map into efi_memmap and feeds its RAM to
 * memmap.c. Must run while the boot tables identity map the first GiB.
 */
void efi_memmap_init(uint64_t boot_info_paddr);
/*
 * CR0/CR4 as the firmware's runtime code expects them (it uses SSE):
 * CR4.OSFXSR and OSXMMEXCPT set, CR0.EM and CR0.TS clear, CR0.MP set.
 */
void efi_fpu_init(void);

#endif
