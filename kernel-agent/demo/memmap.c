#include "memmap.h"
#include "kprintf.h"
#include "layout.h"
#include "paging.h"
#include "pvh.h"

struct ram_range {
	uint64_t start;
	uint64_t end;
};

uint64_t ram_size;

static struct ram_range ram_ranges[MEMMAP_MAX_RAM_RANGES];
static unsigned ram_range_count;
static struct ram_range excluded[MEMMAP_MAX_EXCLUDED];
static unsigned excluded_count;

static const char *memmap_type_name(uint32_t type)
{
	switch (type) {
	case XEN_HVM_MEMMAP_TYPE_RAM:
		return "usable";
	case XEN_HVM_MEMMAP_TYPE_RESERVED:
		return "reserved";
	case XEN_HVM_MEMMAP_TYPE_ACPI:
		return "ACPI data";
	case XEN_HVM_MEMMAP_TYPE_NVS:
		return "ACPI NVS";
	case XEN_HVM_MEMMAP_TYPE_UNUSABLE:
		return "unusable";
	case XEN_HVM_MEMMAP_TYPE_DISABLED:
		return "disabled";
	case XEN_HVM_MEMMAP_TYPE_PMEM:
		return "persistent";
	default:
		return "unknown";
	}
}

/* The boot tables identity map the first GiB; nothing else is reachable. */
static bool boot_mapped(uint64_t paddr, uint64_t size)
{
	return paddr != 0 && paddr < IDENTITY_MAP_MAX && size <= IDENTITY_MAP_MAX - paddr;
}

static void use_fallback(const char *why)
{
	kprintf("memmap: %s, assuming %lu MiB of RAM\n", why, RAM_SIZE_FALLBACK >> 20);
	ram_ranges[0].start = 0;
	ram_ranges[0].end = RAM_SIZE_FALLBACK;
	ram_range_count = 1;
	ram_size = RAM_SIZE_FALLBACK;
}

void memmap_init(uint32_t start_info_paddr)
{
	const struct hvm_start_info *info;

	ram_range_count = 0;
	ram_size = 0;

	if (!boot_mapped(start_info_paddr, sizeof(*info))) {
		use_fallback("no PVH start info");
		return;
	}
	info = (const struct hvm_start_info *)(uintptr_t)start_info_paddr;
	if (info->magic != XEN_HVM_START_MAGIC_VALUE) {
		use_fallback("bad hvm_start_info magic");
		return;
	}
	if (info->version < 1 || info->memmap_entries == 0) {
		use_fallback("hvm_start_info has no memory map");
		return;
	}

	uint64_t table_size = (uint64_t)info->memmap_entries *
			      sizeof(struct hvm_memmap_table_entry);

	if (!boot_mapped(info->memmap_paddr, table_size)) {
		use_fallback("memory map out of reach");
		return;
	}

	const struct hvm_memmap_table_entry *e =
		(const struct hvm_memmap_table_entry *)(uintptr_t)info->memmap_paddr;

	kprintf("memmap: hvm_start_info v%u at 0x%x, %u entries:\n", info->version,
		start_info_paddr, info->memmap_entries);
	for (uint32_t i = 0; i < info->memmap_entries; i++) {
		uint64_t end = e[i].addr + e[i].size;

		kprintf("  [mem 0x%016lx-0x%016lx] %s\n", e[i].addr, end - 1,
			memmap_type_name(e[i].type));
		if (e[i].type != XEN_HVM_MEMMAP_TYPE_RAM || e[i].size == 0)
			continue;
		if (ram_range_count < MEMMAP_MAX_RAM_RANGES) {
			ram_ranges[ram_range_count].start = e[i].addr;
			ram_ranges[ram_range_count].end = end;
			ram_range_count++;
		}
		if (end > ram_size)
			ram_size = end;
	}
	if (ram_size == 0) {
		use_fallback("memory map lists no RAM");
		return;
	}
}

void memmap_reset(void)
{
	ram_range_count = 0;
	excluded_count = 0;
	ram_size = 0;
}

void memmap_add_ram(uint64_t start, uint64_t end)
{
	struct ram_range *last = ram_range_count ? &ram_ranges[ram_range_count - 1] : NULL;

	if (last && start == last->end) {
		last->end = end; /* UEFI maps are sorted and split finely: merge */
	} else if (ram_range_count < MEMMAP_MAX_RAM_RANGES) {
		ram_ranges[ram_range_count].start = start;
		ram_ranges[ram_range_count].end = end;
		ram_range_count++;
	} else {
		kprintf("memmap: more than %u RAM ranges, ignoring 0x%lx-0x%lx\n",
			MEMMAP_MAX_RAM_RANGES, start, end);
		return;
	}
	if (end > ram_size)
		ram_size = end;
}

void memmap_finish(void)
{
	if (ram_size == 0)
		use_fallback("memory map lists no RAM");
}

bool memmap_overlaps_ram(uint64_t start, uint64_t end)
{
	for (unsigned i = 0; i < ram_range_count; i++) {
		if (start < ram_ranges[i].end && ram_ranges[i].start < end)
			return true;
	}
	return false;
}

uint64_t memmap_usable_bytes(void)
{
	uint64_t total = 0;

	for (unsigned i = 0; i < ram_range_count; i++)
		total += ram_ranges[i].end - ram_ranges[i].start;
	return total;
}

void memmap_exclude(uint64_t start, uint64_t end)
{
	if (excluded_count == MEMMAP_MAX_EXCLUDED)
		panic("memmap: more than %u ranges to leave out of the direct map",
		      MEMMAP_MAX_EXCLUDED);
	excluded[excluded_count].start = start;
	excluded[excluded_count].end = end;
	excluded_count++;
}

bool memmap_overlaps_excluded(uint64_t start, uint64_t end)
{
	for (unsigned i = 0; i < excluded_count; i++) {
		if (start < excluded[i].end && excluded[i].start < end)
			return true;
	}
	return false;
}

bool memmap_direct_mapped(uint64_t pa)
{
	uint64_t chunk = pa & ~(uint64_t)(LARGE_PAGE_SIZE - 1);

	if (pa >= DIRECT_MAP_MAX || !memmap_overlaps_ram(chunk, chunk + LARGE_PAGE_SIZE))
		return false;
	pa &= ~(uint64_t)(PAGE_SIZE - 1);
	return !memmap_overlaps_excluded(pa, pa + PAGE_SIZE);
}
