/*
 * The UEFI loader of the demo kernel: BOOTX64.EFI (gnu-efi). It carries
 * build/demo-kernel.elf (the same higher-half kernel PVH boots), copies its
 * PT_LOAD segments to their physical addresses, gets the memory map,
 * exits boot services (getting the map again on a stale key, with nothing
 * allocating in between) and calls the kernel's efi_entry64 (efi_entry.S)
 * with a struct efi_boot_info (the map, and a copy of the memory attributes
 * table taken while boot services still ran). The kernel then loads its own GDT and page
 * tables; nothing of this loader is used after the call.
 *
 * gnu-efi's crt0 calls efi_main with the SysV ABI: efi_main is not EFIAPI,
 * and firmware calls go through uefi_call_wrapper.
 */
#include <efi.h>
#include <efilib.h>

#include "efi_boot.h"

extern const UINT8 _binary_demo_kernel_elf_start[];
extern const UINT8 _binary_demo_kernel_elf_end[];

#define ENTRY_SYMBOL "efi_entry64"
#define EXIT_ATTEMPTS 8
#define BELOW_1G 0x3fffffffULL /* the kernel's boot tables map the first GiB */

typedef struct {
	UINT8 e_ident[16];
	UINT16 e_type, e_machine;
	UINT32 e_version;
	UINT64 e_entry, e_phoff, e_shoff;
	UINT32 e_flags;
	UINT16 e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx;
} Elf64_Ehdr;

typedef struct {
	UINT32 p_type, p_flags;
	UINT64 p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align;
} Elf64_Phdr;

typedef struct {
	UINT32 sh_name, sh_type;
	UINT64 sh_flags, sh_addr, sh_offset, sh_size;
	UINT32 sh_link, sh_info;
	UINT64 sh_addralign, sh_entsize;
} Elf64_Shdr;

typedef struct {
	UINT32 st_name;
	UINT8 st_info, st_other;
	UINT16 st_shndx;
	UINT64 st_value, st_size;
} Elf64_Sym;

/* UEFI 2.10, 4.6.4: EFI_MEMORY_ATTRIBUTES_TABLE (the RO/XP splits of the runtime regions). */
static EFI_GUID memattr_guid = { 0xdcfa911d, 0x26eb, 0x469f,
				 { 0xa2, 0x20, 0x38, 0xb7, 0xdc, 0x46, 0x12, 0x20 } };

typedef struct {
	UINT32 Version;
	UINT32 NumberOfEntries;
	UINT32 DescriptorSize;
	UINT32 Reserved;
} MEMATTR_HEADER;

static const MEMATTR_HEADER *find_memattr(EFI_SYSTEM_TABLE *st)
{
	for (UINTN i = 0; i < st->NumberOfTableEntries; i++)
		if (CompareGuid(&st->ConfigurationTable[i].VendorGuid, &memattr_guid) == 0)
			return st->ConfigurationTable[i].VendorTable;
	return NULL;
}

#define PT_LOAD 1
#define SHT_SYMTAB 2

static void fail(const CHAR16 *what, EFI_STATUS status)
{
	Print(L"kinspect-uefi: %s: %r\r\n", what, status);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

/* The symbol's virtual address, from the ELF's own symbol table. */
static UINT64 find_symbol(const UINT8 *elf, const char *name)
{
	const Elf64_Ehdr *eh = (const void *)elf;
	const Elf64_Shdr *sh = (const void *)(elf + eh->e_shoff);

	for (UINT16 i = 0; i < eh->e_shnum; i++) {
		if (sh[i].sh_type != SHT_SYMTAB)
			continue;
		const Elf64_Sym *sym = (const void *)(elf + sh[i].sh_offset);
		const char *strtab = (const char *)(elf + sh[sh[i].sh_link].sh_offset);

		for (UINT64 j = 0; j < sh[i].sh_size / sizeof(*sym); j++)
			if (str_eq(strtab + sym[j].st_name, name))
				return sym[j].st_value;
	}
	return 0;
}

EFI_STATUS efi_main(EFI_HANDLE image, EFI_SYSTEM_TABLE *st)
{
	const UINT8 *elf = _binary_demo_kernel_elf_start;
	const Elf64_Ehdr *eh = (const void *)elf;
	const Elf64_Phdr *ph;
	UINT64 lo = ~0ULL, hi = 0, entry_va, entry_pa = 0;
	EFI_STATUS status;

	InitializeLib(image, st);
	Print(L"kinspect-uefi: loading the demo kernel (%d bytes of ELF)\r\n",
	      (INTN)(_binary_demo_kernel_elf_end - _binary_demo_kernel_elf_start));
	if (CompareMem(eh->e_ident, "\177ELF", 4) != 0 || eh->e_machine != 62)
		fail(L"the embedded kernel is not an x86_64 ELF", EFI_LOAD_ERROR);
	ph = (const void *)(elf + eh->e_phoff);

	for (UINT16 i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		if (ph[i].p_paddr < lo)
			lo = ph[i].p_paddr;
		if (ph[i].p_paddr + ph[i].p_memsz > hi)
			hi = ph[i].p_paddr + ph[i].p_memsz;
	}
	lo &= ~0xfffULL;
	/* LoaderCode: the firmware may map LoaderData NX, and we execute there first. */
	EFI_PHYSICAL_ADDRESS base = lo;
	status = uefi_call_wrapper(BS->AllocatePages, 4, AllocateAddress, EfiLoaderCode,
				   EFI_SIZE_TO_PAGES(hi - lo), &base);
	if (EFI_ERROR(status))
		fail(L"the kernel's physical range is taken", status);

	entry_va = find_symbol(elf, ENTRY_SYMBOL);
	for (UINT16 i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		CopyMem((void *)ph[i].p_paddr, (void *)(elf + ph[i].p_offset), ph[i].p_filesz);
		SetMem((void *)(ph[i].p_paddr + ph[i].p_filesz), ph[i].p_memsz - ph[i].p_filesz, 0);
		if (entry_va >= ph[i].p_vaddr && entry_va < ph[i].p_vaddr + ph[i].p_memsz)
			entry_pa = entry_va - ph[i].p_vaddr + ph[i].p_paddr;
	}
	if (!entry_pa)
		fail(L"no " ENTRY_SYMBOL L" in the kernel", EFI_NOT_FOUND);

	/* The boot info and room for the map, below 1 GiB, allocated before the last GetMemoryMap. */
	UINTN map_size = 0, map_key, desc_size;
	UINT32 desc_version;
	status = uefi_call_wrapper(BS->GetMemoryMap, 5, &map_size, NULL, &map_key, &desc_size,
				   &desc_version);
	if (status != EFI_BUFFER_TOO_SMALL)
		fail(L"GetMemoryMap (size)", status);
	const MEMATTR_HEADER *memattr = find_memattr(st);
	UINTN memattr_size = memattr ? sizeof(*memattr) +
				(UINTN)memattr->NumberOfEntries * memattr->DescriptorSize : 0;
	UINTN buffer_size = sizeof(struct efi_boot_info) + memattr_size + map_size + 16 * desc_size;
	EFI_PHYSICAL_ADDRESS buffer = BELOW_1G;
	status = uefi_call_wrapper(BS->AllocatePages, 4, AllocateMaxAddress, EfiLoaderData,
				   EFI_SIZE_TO_PAGES(buffer_size), &buffer);
	if (EFI_ERROR(status))
		fail(L"AllocatePages (memory map)", status);
	struct efi_boot_info *info = (void *)buffer;
	UINT8 *memattr_copy = (UINT8 *)(buffer + sizeof(*info));
	EFI_MEMORY_DESCRIPTOR *map = (void *)(memattr_copy + ((memattr_size + 7) & ~7ULL));

	/* Copy it now: it is in BootServicesData, gone once boot services exit. */
	if (memattr)
		CopyMem(memattr_copy, (void *)memattr, memattr_size);

	Print(L"kinspect-uefi: kernel at 0x%lx-0x%lx, entry 0x%lx; exiting boot services\r\n",
	      lo, hi, entry_pa);

	UINT32 attempt;
	for (attempt = 1; attempt <= EXIT_ATTEMPTS; attempt++) {
		map_size = buffer_size - ((UINT8 *)map - (UINT8 *)buffer);
		status = uefi_call_wrapper(BS->GetMemoryMap, 5, &map_size, map, &map_key,
					   &desc_size, &desc_version);
		if (EFI_ERROR(status))
			fail(L"GetMemoryMap", status);
		status = uefi_call_wrapper(BS->ExitBootServices, 2, image, map_key);
		if (status != EFI_INVALID_PARAMETER)
			break; /* a stale key: the map changed, get it again */
	}
	if (EFI_ERROR(status))
		fail(L"ExitBootServices", status);

	/* No boot services from here: no Print, no allocation. */
	info->magic = EFI_BOOT_INFO_MAGIC;
	info->memmap_paddr = (UINT64)map;
	info->memmap_size = map_size;
	info->desc_size = desc_size;
	info->desc_version = desc_version;
	info->exit_attempts = attempt;
	info->system_table_paddr = (UINT64)st;
	info->memattr_paddr = memattr ? (UINT64)memattr_copy : 0;
	info->memattr_size = memattr_size;

	__asm__ volatile("cli");
	((void (*)(UINT64))entry_pa)((UINT64)info);
	for (;;)
		__asm__ volatile("hlt");
	return EFI_SUCCESS;
}
