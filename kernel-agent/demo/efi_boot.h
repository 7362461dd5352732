/*
 * What the UEFI loader (uefi/loader.c) hands the kernel's UEFI entry
 * (efi_entry64): the memory map it got just before ExitBootServices.
 * Shared by the loader (gnu-efi) and the kernel, so it uses only
 * __UINT*_TYPE__ and no headers.
 */
#ifndef DEMO_EFI_BOOT_H
#define DEMO_EFI_BOOT_H

/* "kinspefi", little-endian. */
#define EFI_BOOT_INFO_MAGIC 0x69666570736e696bULL

struct efi_boot_info {
	__UINT64_TYPE__ magic;
	__UINT64_TYPE__ memmap_paddr;	/* the descriptors, DescriptorSize apart */
	__UINT64_TYPE__ memmap_size;	/* bytes */
	__UINT64_TYPE__ desc_size;	/* DescriptorSize (48 on OVMF, not 40) */
	__UINT32_TYPE__ desc_version;
	__UINT32_TYPE__ exit_attempts;	/* ExitBootServices calls it took */
	__UINT64_TYPE__ system_table_paddr;
	/* A copy of EFI_MEMORY_ATTRIBUTES_TABLE (it lives in BootServicesData); size 0 if none. */
	__UINT64_TYPE__ memattr_paddr;
	__UINT64_TYPE__ memattr_size;
};
_Static_assert(sizeof(struct efi_boot_info) == 64, "efi_boot_info layout");

#endif
