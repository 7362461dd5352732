/*
 * The UEFI boot path of the demo kernel. The loader (uefi/loader.c) exits
 * boot services and jumps to efi_entry64 (efi_entry.S) with the memory map
 * it got last; this file keeps that map where the inspector finds it by
 * symbol (efi_memmap, efi_memmap_size, efi_memmap_desc_size) and tells
 * memmap.c which ranges are RAM.
 */
#include "efi.h"
#include "efi_boot.h"
#include "kprintf.h"
#include "layout.h"
#include "memmap.h"
#include "string.h"
#include "x86.h"

uint8_t efi_memmap[EFI_MEMMAP_MAX] __aligned(8);
uint64_t efi_memmap_size;
uint64_t efi_memmap_desc_size;
uint32_t efi_memmap_desc_version;
uint64_t efi_system_table_paddr;
uint8_t efi_memattr[EFI_MEMATTR_MAX] __aligned(8);
uint64_t efi_memattr_size;

static const char *efi_type_name(uint32_t type)
{
	static const char *const names[] = {
		"Reserved",	"LoaderCode",	     "LoaderData",    "BootServicesCode",
		"BootServicesData", "RuntimeServicesCode", "RuntimeServicesData",
		"Conventional", "Unusable",	     "ACPIReclaim",   "ACPINVS",
		"MMIO",		"MMIOPortSpace",     "PalCode",	      "Persistent",
	};

	return type < ARRAY_SIZE(names) ? names[type] : "unknown";
}

/*
 * Memory the kernel may treat as RAM once boot services are gone. Runtime
 * regions are RAM too, but left out of the direct map (memmap_exclude): only
 * the mappings made for the firmware reach them.
 */
static bool efi_type_is_ram(uint32_t type)
{
	switch (type) {
	case EFI_LOADER_CODE:
	case EFI_LOADER_DATA:
	case EFI_BOOT_SERVICES_CODE:
	case EFI_BOOT_SERVICES_DATA:
	case EFI_RUNTIME_SERVICES_CODE:
	case EFI_RUNTIME_SERVICES_DATA:
	case EFI_CONVENTIONAL_MEMORY:
	case EFI_ACPI_RECLAIM_MEMORY:
	case EFI_ACPI_MEMORY_NVS:
	case EFI_PERSISTENT_MEMORY:
		return true;
	default:
		return false;
	}
}

static bool boot_mapped(uint64_t paddr, uint64_t size)
{
	return paddr != 0 && paddr < IDENTITY_MAP_MAX && size <= IDENTITY_MAP_MAX - paddr;
}

void efi_memmap_init(uint64_t boot_info_paddr)
{
	const struct efi_boot_info *info = (const void *)boot_info_paddr;

	if (!boot_mapped(boot_info_paddr, sizeof(*info)) || info->magic != EFI_BOOT_INFO_MAGIC)
		panic("efi: no boot info from the loader at 0x%lx\n", boot_info_paddr);
	if (info->desc_size < sizeof(struct efi_memory_descriptor) || info->desc_size % 8 ||
	    info->memmap_size > EFI_MEMMAP_MAX || !boot_mapped(info->memmap_paddr, info->memmap_size))
		panic("efi: unusable memory map (%lu bytes, descriptors %lu apart)\n",
		      info->memmap_size, info->desc_size);

	memcpy(efi_memmap, (const void *)info->memmap_paddr, info->memmap_size);
	efi_memmap_size = info->memmap_size;
	efi_memmap_desc_size = info->desc_size;
	efi_memmap_desc_version = info->desc_version;
	efi_system_table_paddr = info->system_table_paddr;

	if (info->memattr_size > EFI_MEMATTR_MAX || (info->memattr_size &&
	    !boot_mapped(info->memattr_paddr, info->memattr_size)))
		kprintf("efi: memory attributes table unusable (%lu bytes), not kept\n",
			info->memattr_size);
	else if (info->memattr_size) {
		memcpy(efi_memattr, (const void *)info->memattr_paddr, info->memattr_size);
		efi_memattr_size = info->memattr_size;
		kprintf("efi: memory attributes table kept (%lu bytes)\n", efi_memattr_size);
	}

	unsigned count = efi_memmap_size / efi_memmap_desc_size, runtime = 0;
	uint64_t runtime_pages = 0;

	kprintf("efi: memory map v%u, %u descriptors %lu bytes apart, ExitBootServices "
		"after %u attempt(s), system table at 0x%lx\n",
		efi_memmap_desc_version, count, efi_memmap_desc_size, info->exit_attempts,
		efi_system_table_paddr);
	memmap_reset();
	for (unsigned i = 0; i < count; i++) {
		const struct efi_memory_descriptor *d =
			(const void *)(efi_memmap + i * efi_memmap_desc_size);
		uint64_t end = d->physical_start + (d->number_of_pages << 12);

		if (d->attribute & EFI_MEMORY_RUNTIME) {
			runtime++;
			runtime_pages += d->number_of_pages;
			kprintf("  [mem 0x%016lx-0x%016lx] %s attr 0x%lx (runtime)\n",
				d->physical_start, end - 1, efi_type_name(d->type), d->attribute);
		}
		if (efi_type_is_ram(d->type) && d->number_of_pages) {
			memmap_add_ram(d->physical_start, end);
			if (d->attribute & EFI_MEMORY_RUNTIME)
				memmap_exclude(d->physical_start, end);
		}
	}
	kprintf("efi: %u runtime regions (%lu pages), the RAM ones left out of the direct map\n",
		runtime, runtime_pages);
	memmap_finish();
}

void efi_fpu_init(void)
{
	uint64_t cr0 = read_cr0(), cr4 = read_cr4();

	/* The runtime services are built for SSE: no #UD (OSFXSR), no #NM (EM, TS). */
	write_cr0((cr0 & ~(CR0_EM | CR0_TS)) | CR0_MP);
	write_cr4(cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT);
	kprintf("efi: for the runtime services CR0 0x%lx -> 0x%lx, CR4 0x%lx -> 0x%lx "
		"(OSFXSR, OSXMMEXCPT; EM and TS clear)\n", cr0, read_cr0(), cr4, read_cr4());
}
