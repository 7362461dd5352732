/*
 * UEFI runtime services for the inspector (AGENT_PROTOCOL.md, section 4,
 * "UEFI runtime services"): SetVirtualAddressMap once, GetTime, GetVariable
 * and GetNextVariableName, called through the host's efi_call hook (the MS
 * x64 ABI: agent_x86_efi_call).
 *
 * The firmware is reached where it runs in the current mode: at its
 * physical addresses (the identity map) before SetVirtualAddressMap, at the
 * virtual addresses the inspector chose after it. Runtime memory is never
 * read through read_phys (a kernel may leave it out of its direct map, as
 * Linux and the demo kernel do): the agent walks the page tables to check
 * that an address maps the physical page it should, then loads through that
 * address. Every runtime region is checked the same way before a call, so a
 * missing mapping is a refusal, never a page fault inside the firmware.
 */
#include "agent.h"
#include "agent_internal.h"
#include "agent_msgpack.h"

#define PAGE 0x1000ULL

/* UEFI 2.10, 4.3 and 4.5: the fields of the two tables the agent reads. */
#define ST_SIGNATURE 0x5453595320494249ULL /* "IBI SYST" */
#define RT_SIGNATURE 0x56524553544e5552ULL /* "RUNTSERV" */
#define ST_FIRMWARE_REVISION 32
#define ST_RUNTIME_SERVICES 88
#define RT_GET_TIME 24
#define RT_SET_VIRTUAL_ADDRESS_MAP 56
#define RT_GET_VARIABLE 72
#define RT_GET_NEXT_VARIABLE_NAME 80

#define EFI_RUNTIME_SERVICES_CODE 5
#define EFI_RUNTIME_SERVICES_DATA 6
#define EFI_MEMORY_RUNTIME (1ULL << 63)

#define CR0_EM (1ULL << 2)
#define CR0_TS (1ULL << 3)
#define CR4_OSFXSR (1ULL << 9)

#define EFI_ERROR_BIT (1ULL << 63)
#define EFI_NOT_FOUND (EFI_ERROR_BIT | 14)

/* Runtime descriptors the agent handles (a bit each while checking the pairs). */
#define RUNTIME_MAX 64
/* A region's page count beyond which its size would not fit the address space. */
#define PAGES_MAX (1ULL << 40)

/* UEFI 2.10, 7.2: EFI_MEMORY_DESCRIPTOR (desc_size apart, which may be more than 40). */
struct efi_descriptor {
	uint32_t type;
	uint32_t pad;
	uint64_t physical_start;
	uint64_t virtual_start;
	uint64_t number_of_pages;
	uint64_t attribute;
};
_Static_assert(sizeof(struct efi_descriptor) == 40, "EFI_MEMORY_DESCRIPTOR layout");

/* UEFI 2.10, 8.3: EFI_TIME. */
struct efi_time {
	uint16_t year;
	uint8_t month, day, hour, minute, second, pad1;
	uint32_t nanosecond;
	int16_t time_zone;
	uint8_t daylight, pad2;
};
_Static_assert(sizeof(struct efi_time) == 16, "EFI_TIME layout");

/* Appendix D: the error codes (EFI_ERROR_BIT | index). */
static const char *const efi_error_names[] = {
	[1] = "EFI_LOAD_ERROR",		[2] = "EFI_INVALID_PARAMETER",
	[3] = "EFI_UNSUPPORTED",	[4] = "EFI_BAD_BUFFER_SIZE",
	[5] = "EFI_BUFFER_TOO_SMALL",	[6] = "EFI_NOT_READY",
	[7] = "EFI_DEVICE_ERROR",	[8] = "EFI_WRITE_PROTECTED",
	[9] = "EFI_OUT_OF_RESOURCES",	[10] = "EFI_VOLUME_CORRUPTED",
	[11] = "EFI_VOLUME_FULL",	[12] = "EFI_NO_MEDIA",
	[13] = "EFI_MEDIA_CHANGED",	[14] = "EFI_NOT_FOUND",
	[15] = "EFI_ACCESS_DENIED",	[16] = "EFI_NO_RESPONSE",
	[17] = "EFI_NO_MAPPING",	[18] = "EFI_TIMEOUT",
	[19] = "EFI_NOT_STARTED",	[20] = "EFI_ALREADY_STARTED",
	[21] = "EFI_ABORTED",		[22] = "EFI_ICMP_ERROR",
	[23] = "EFI_TFTP_ERROR",	[24] = "EFI_PROTOCOL_ERROR",
	[25] = "EFI_INCOMPATIBLE_VERSION", [26] = "EFI_SECURITY_VIOLATION",
	[27] = "EFI_CRC_ERROR",		[28] = "EFI_END_OF_MEDIA",
	[31] = "EFI_END_OF_FILE",	[32] = "EFI_INVALID_LANGUAGE",
	[33] = "EFI_COMPROMISED_DATA",	[34] = "EFI_IP_ADDRESS_CONFLICT",
	[35] = "EFI_HTTP_ERROR",
};

static const char UNMAPPED_IDENTITY[] =
	"efi-unmapped: a page of a runtime region is not identity-mapped "
	"(the firmware runs at its physical addresses until SetVirtualAddressMap)";
static const char UNMAPPED_VIRTUAL[] =
	"efi-unmapped: a page of a runtime region is not mapped at its new virtual address";

static int refuse(struct failure *f, uint64_t address, const char *message)
{
	return agent_fail_at(f, AGENT_E_REFUSED, address, message);
}

/* Error 10: the status's name (or its number), the raw status as the address. */
static int efi_error(struct agent *a, uint64_t status, struct failure *f)
{
	uint64_t code = status & ~EFI_ERROR_BIT;
	const char *name = NULL;

	if (code < sizeof(efi_error_names) / sizeof(efi_error_names[0]))
		name = efi_error_names[code];
	if (!name) {
		static const char prefix[] = "EFI status 0x", digits[] = "0123456789abcdef";
		unsigned n = 0;
		int shift = 60;

		for (; prefix[n]; n++)
			a->efi_message[n] = prefix[n];
		while (shift > 0 && !((status >> shift) & 0xf))
			shift -= 4;
		for (; shift >= 0; shift -= 4)
			a->efi_message[n++] = digits[(status >> shift) & 0xf];
		a->efi_message[n] = 0;
		name = a->efi_message;
	}
	return agent_fail_at(f, AGENT_E_EFI, status, name);
}

/* -- the firmware's memory map ----------------------------------------------- */

static int efi_ready(struct agent *a, struct failure *f)
{
	const struct agent_efi *efi = a->ops->efi;

	if (!efi || !a->ops->efi_call || !efi->system_table || !efi->memmap)
		return agent_fail(f, AGENT_E_UNSUPPORTED,
				  "the host kernel gave the agent no UEFI information "
				  "(not booted through UEFI)");
	if (efi->desc_size < sizeof(struct efi_descriptor) || efi->desc_size % 8 ||
	    efi->memmap_size % efi->desc_size)
		return agent_fail(f, AGENT_E_UNSUPPORTED,
				  "the host's EFI memory map has an unusable DescriptorSize");
	return AGENT_OK;
}

static const struct efi_descriptor *kept_descriptor(const struct agent_efi *efi, uint64_t i)
{
	return (const void *)((const uint8_t *)efi->memmap + i * efi->desc_size);
}

/* The next EFI_MEMORY_RUNTIME descriptor of the kept map at or after *i, in map order. */
static const struct efi_descriptor *next_runtime(const struct agent_efi *efi, uint64_t *i)
{
	uint64_t count = efi->memmap_size / efi->desc_size;

	while (*i < count) {
		const struct efi_descriptor *d = kept_descriptor(efi, (*i)++);

		if (d->attribute & EFI_MEMORY_RUNTIME)
			return d;
	}
	return NULL;
}

/* The k-th entry of the virtual map given to SetVirtualAddressMap (runtime descriptors, in order). */
static struct efi_descriptor *map_entry(struct agent *a, unsigned k)
{
	return (void *)(a->efi_map + k * a->ops->efi->desc_size);
}

bool agent_efi_virtual_range(const struct agent *a, unsigned k, uint64_t *va, uint64_t *size)
{
	if (!a->efi_virtual || !a->ops->efi || (k + 1) * a->ops->efi->desc_size > a->efi_map_size)
		return false;
	const struct efi_descriptor *d = (const void *)(a->efi_map + k * a->ops->efi->desc_size);

	*va = d->virtual_start;
	*size = d->number_of_pages * PAGE;
	return true;
}

static unsigned runtime_count(const struct agent_efi *efi)
{
	uint64_t i = 0;
	unsigned n = 0;

	while (next_runtime(efi, &i))
		n++;
	return n;
}

static uint64_t system_table_now(struct agent *a)
{
	return a->efi_virtual ? a->efi_st_va : a->ops->efi->system_table;
}

/* The physical address behind a firmware address in the current mode (false: in no runtime region). */
static bool firmware_pa(struct agent *a, uint64_t va, uint64_t *pa)
{
	if (!a->efi_virtual) {
		*pa = va;
		return true;
	}
	for (unsigned k = 0; k < a->efi_map_size / a->ops->efi->desc_size; k++) {
		const struct efi_descriptor *d = map_entry(a, k);

		if (va - d->virtual_start < d->number_of_pages * PAGE) {
			*pa = d->physical_start + (va - d->virtual_start);
			return true;
		}
	}
	return false;
}

/* -- reaching the firmware --------------------------------------------------- */

/* Every page of [va, va + size) maps pa + the same offset; else *bad is the first VA that does not. */
static bool maps_to(struct agent *a, const struct paging *pg, uint64_t va, uint64_t pa,
		    uint64_t size, uint64_t *bad)
{
	for (uint64_t off = 0; off < size;) {
		struct translation t;
		struct failure ignored;

		if (agent_translate(a, pg, va + off, &t, &ignored) != AGENT_OK || t.pa != pa + off) {
			*bad = va + off;
			return false;
		}
		/* The rest of the leaf maps the rest of its physical page alike. */
		off += t.page_size - ((va + off) & (t.page_size - 1));
	}
	return true;
}

/* Loads what the firmware keeps at va (current mode), once the walk says va maps it. */
static int firmware_load(struct agent *a, const struct paging *pg, uint64_t va, void *out,
			 unsigned len, struct failure *f)
{
	uint64_t pa, bad;
	uint8_t *dst = out;

	if (!firmware_pa(a, va, &pa))
		return refuse(f, va, "efi-unmapped: a firmware pointer outside every runtime region");
	if (!maps_to(a, pg, va, pa, len, &bad))
		return refuse(f, bad, a->efi_virtual ? UNMAPPED_VIRTUAL : UNMAPPED_IDENTITY);
	const volatile uint8_t *src = (const volatile uint8_t *)va;

	for (unsigned i = 0; i < len; i++)
		dst[i] = src[i];
	return AGENT_OK;
}

/* Every runtime region (MMIO included) mapped where the firmware reaches it now. */
static int check_regions(struct agent *a, const struct paging *pg, struct failure *f)
{
	const struct agent_efi *efi = a->ops->efi;
	const struct efi_descriptor *d;
	uint64_t i = 0, bad;

	for (unsigned k = 0; (d = next_runtime(efi, &i)); k++) {
		uint64_t va = a->efi_virtual ? map_entry(a, k)->virtual_start : d->physical_start;

		if (d->number_of_pages >= PAGES_MAX)
			return agent_fail_at(f, AGENT_E_UNSUPPORTED, d->physical_start,
					     "a runtime region of the host's map is too large");
		if (!maps_to(a, pg, va, d->physical_start, d->number_of_pages * PAGE, &bad))
			return refuse(f, bad, a->efi_virtual ? UNMAPPED_VIRTUAL : UNMAPPED_IDENTITY);
	}
	return AGENT_OK;
}

/* The entry point of the runtime service at `offset` of EFI_RUNTIME_SERVICES, callable now. */
static int service(struct agent *a, const struct paging *pg, unsigned offset, uint64_t *fn,
		   struct failure *f)
{
	uint64_t st = system_table_now(a), rt, signature, pa;
	struct translation t;
	struct failure ignored;
	int status = firmware_load(a, pg, st, &signature, 8, f);

	if (status != AGENT_OK)
		return status;
	if (signature != ST_SIGNATURE)
		return agent_fail_at(f, AGENT_E_UNSUPPORTED, st,
				     "no EFI_SYSTEM_TABLE signature where the host put the table");
	status = firmware_load(a, pg, st + ST_RUNTIME_SERVICES, &rt, 8, f);
	if (status == AGENT_OK)
		status = firmware_load(a, pg, rt, &signature, 8, f);
	if (status != AGENT_OK)
		return status;
	if (signature != RT_SIGNATURE)
		return agent_fail_at(f, AGENT_E_UNSUPPORTED, rt,
				     "ST->RuntimeServices has no EFI_RUNTIME_SERVICES signature");
	status = firmware_load(a, pg, rt + offset, fn, 8, f);
	if (status != AGENT_OK)
		return status;
	if (!firmware_pa(a, *fn, &pa) || agent_translate(a, pg, *fn, &t, &ignored) != AGENT_OK ||
	    t.pa != pa || !(t.flags & AGENT_RANGE_X))
		return refuse(f, *fn,
			      "efi-unmapped: the service's entry point is not mapped executable "
			      "where the firmware calls it");
	return AGENT_OK;
}

/* The firmware's code uses SSE: without OSFXSR it would #UD, with EM or TS #NM. */
static int sse_ready(struct agent *a, struct failure *f)
{
	struct agent_cpu cpu = { 0 };

	if (a->ops->read_cpu(a->ctx, &cpu) != AGENT_OK)
		return agent_fail(f, AGENT_E_INTERNAL, "read_cpu failed");
	if (!(cpu.cr4 & CR4_OSFXSR) || (cpu.cr0 & (CR0_EM | CR0_TS)))
		return agent_fail(f, AGENT_E_UNSUPPORTED,
				  "the firmware's code uses SSE: CR4.OSFXSR must be set, CR0.EM "
				  "and CR0.TS clear");
	return AGENT_OK;
}

/* Calls fn (MS x64 ABI, through the host's hook) with interrupts masked. */
static uint64_t call(struct agent *a, uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3,
		     uint64_t a4, uint64_t a5)
{
	const uint64_t args[AGENT_EFI_ARGS] = { a1, a2, a3, a4, a5 };
	bool mask = a->ops->irq_save && a->ops->irq_restore;
	uint64_t saved = mask ? a->ops->irq_save(a->ctx) : 0;
	uint64_t status = a->ops->efi_call(a->ctx, fn, args);

	if (mask)
		a->ops->irq_restore(a->ctx, saved);
	return status;
}

/* The common start of a call: UEFI present, the paging mode, every region reachable, the entry point. */
static int prepare(struct agent *a, struct paging *pg, unsigned offset, uint64_t *fn,
		   struct failure *f)
{
	int status = agent_paging_setup(a, pg, f);

	if (status == AGENT_OK)
		status = sse_ready(a, f);
	if (status == AGENT_OK)
		status = check_regions(a, pg, f);
	if (status == AGENT_OK)
		status = service(a, pg, offset, fn, f);
	return status;
}

/* -- parameters -------------------------------------------------------------- */

static int param_item(struct params *p, struct mp_item *item, enum mp_type type,
		      const char *wrong, struct failure *f)
{
	if (p->taken == p->count)
		return agent_fail(f, AGENT_E_PARAMS, "missing parameter");
	p->taken++;
	if (!mp_read(p->r, item))
		return agent_fail(f, AGENT_E_MALFORMED, "truncated parameter");
	if (item->type != type)
		return agent_fail(f, AGENT_E_PARAMS, wrong);
	return AGENT_OK;
}

/* name: an ASCII str (no NUL), into UCS-2 with its terminator. */
static int param_name(struct params *p, uint16_t *out, struct failure *f)
{
	struct mp_item name;
	int status = param_item(p, &name, MP_STR, "the variable name must be a str", f);

	if (status != AGENT_OK)
		return status;
	if (name.v.bytes.len >= AGENT_EFI_NAME_MAX)
		return agent_fail(f, AGENT_E_PARAMS, "variable name too long");
	for (uint32_t i = 0; i < name.v.bytes.len; i++) {
		uint8_t c = name.v.bytes.data[i];

		if (c == 0 || c > 0x7f)
			return agent_fail(f, AGENT_E_PARAMS,
					  "the variable name must be ASCII, without NUL");
		out[i] = c;
	}
	out[name.v.bytes.len] = 0;
	return AGENT_OK;
}

/* guid: bin of 16 bytes, EFI_GUID as in memory. */
static int param_guid(struct params *p, uint8_t *out, struct failure *f)
{
	struct mp_item guid;
	int status = param_item(p, &guid, MP_BIN, "the vendor GUID must be bin (16 bytes)", f);

	if (status != AGENT_OK)
		return status;
	if (guid.v.bytes.len != 16)
		return agent_fail(f, AGENT_E_PARAMS, "the vendor GUID must be 16 bytes");
	for (unsigned i = 0; i < 16; i++)
		out[i] = guid.v.bytes.data[i];
	return AGENT_OK;
}

static void kv(struct mp_writer *w, const char *key, uint64_t value)
{
	mp_write_cstr(w, key);
	mp_write_uint(w, value);
}

/* -- methods ------------------------------------------------------------------- */

void agent_efi_init(struct agent *a)
{
	a->efi_virtual = false;
	a->efi_st_va = 0;
	a->efi_map_size = 0;
	a->efi_have_next = false;
}

int agent_m_efi_info(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	const struct agent_efi *efi = a->ops->efi;
	struct paging pg;
	struct failure ignored;
	uint64_t st, rt = 0;
	uint32_t revision = 0;
	int status = efi_ready(a, f);

	if (status == AGENT_OK)
		status = agent_params_done(p, f);
	if (status != AGENT_OK)
		return status;
	st = system_table_now(a);
	/* Read through the page tables like every firmware access: nil when not mapped now. */
	bool readable = agent_paging_setup(a, &pg, &ignored) == AGENT_OK &&
			firmware_load(a, &pg, st + ST_RUNTIME_SERVICES, &rt, 8, &ignored) ==
				AGENT_OK &&
			firmware_load(a, &pg, st + ST_FIRMWARE_REVISION, &revision, 4, &ignored) ==
				AGENT_OK;

	mp_write_map(w, 13);
	kv(w, "system_table", efi->system_table);
	kv(w, "system_table_va", st);
	mp_write_cstr(w, "runtime_services");
	readable ? mp_write_uint(w, rt) : mp_write_nil(w);
	mp_write_cstr(w, "firmware_revision");
	readable ? mp_write_uint(w, revision) : mp_write_nil(w);
	mp_write_cstr(w, "virtual_mode");
	mp_write_bool(w, a->efi_virtual);
	kv(w, "memmap", (uint64_t)efi->memmap);
	kv(w, "memmap_size", efi->memmap_size);
	kv(w, "desc_size", efi->desc_size);
	kv(w, "desc_version", efi->desc_version);
	kv(w, "memattr", efi->memattr ? (uint64_t)efi->memattr : 0);
	kv(w, "memattr_size", efi->memattr ? efi->memattr_size : 0);
	kv(w, "runtime_regions", runtime_count(efi));
	/* What SetVirtualAddressMap was given: [physical_start, virtual_start, pages] per region. */
	mp_write_cstr(w, "virtual_map");
	unsigned n = a->efi_virtual ? (unsigned)(a->efi_map_size / efi->desc_size) : 0;

	mp_write_array(w, n);
	for (unsigned k = 0; k < n; k++) {
		const struct efi_descriptor *d = map_entry(a, k);

		mp_write_array(w, 3);
		mp_write_uint(w, d->physical_start);
		mp_write_uint(w, d->virtual_start);
		mp_write_uint(w, d->number_of_pages);
	}
	return AGENT_OK;
}

#ifndef AGENT_READONLY /* agent.c: nothing that changes the kernel or firmware */
int agent_m_efi_set_virtual_address_map(struct agent *a, struct params *p, struct mp_writer *w,
					struct failure *f)
{
	const struct agent_efi *efi = a->ops->efi;
	const struct efi_descriptor *d;
	struct mp_item pairs, item;
	struct paging pg;
	uint64_t i = 0, seen = 0, fn, bad;
	unsigned count, k;
	int status = efi_ready(a, f);

	if (status == AGENT_OK)
		status = param_item(p, &pairs, MP_ARRAY,
				    "pairs must be an array of [physical_start, virtual_start]", f);
	if (status == AGENT_OK)
		status = agent_paging_setup(a, &pg, f);
	if (status != AGENT_OK)
		return status;
	if (a->efi_virtual)
		return refuse(f, a->efi_st_va,
			      "efi-virtual-mode: SetVirtualAddressMap was already called (UEFI "
			      "allows it once)");
	count = runtime_count(efi);
	if (count > RUNTIME_MAX || count * efi->desc_size > AGENT_EFI_MAP_MAX)
		return agent_fail(f, AGENT_E_UNSUPPORTED,
				  "more runtime descriptors than the agent's virtual map holds");

	/* The virtual map: the runtime descriptors, desc_size apart, VirtualStart from the pairs. */
	for (k = 0; (d = next_runtime(efi, &i)); k++) {
		uint8_t *to = (uint8_t *)map_entry(a, k);
		const uint8_t *from = (const uint8_t *)d;

		for (uint64_t b = 0; b < efi->desc_size; b++)
			to[b] = from[b];
		map_entry(a, k)->virtual_start = 0;
		if (d->number_of_pages >= PAGES_MAX)
			return agent_fail_at(f, AGENT_E_UNSUPPORTED, d->physical_start,
					     "a runtime region of the host's map is too large");
	}
	for (uint32_t n = 0; n < pairs.v.n; n++) {
		uint64_t pa, va;

		if (!mp_read(p->r, &item))
			return agent_fail(f, AGENT_E_MALFORMED, "truncated parameter");
		if (item.type != MP_ARRAY || item.v.n != 2 || !mp_read(p->r, &item) ||
		    item.type != MP_UINT)
			return agent_fail(f, AGENT_E_PARAMS,
					  "each pair must be [physical_start, virtual_start]");
		pa = item.v.u;
		if (!mp_read(p->r, &item) || item.type != MP_UINT)
			return agent_fail(f, AGENT_E_PARAMS,
					  "each pair must be [physical_start, virtual_start]");
		va = item.v.u;
		for (k = 0; k < count && map_entry(a, k)->physical_start != pa; k++)
			;
		if (k == count)
			return agent_fail_at(f, AGENT_E_PARAMS, pa,
					     "a pair names no runtime descriptor");
		if (seen & (1ULL << k))
			return agent_fail_at(f, AGENT_E_PARAMS, pa,
					     "two pairs for one runtime descriptor");
		seen |= 1ULL << k;
		uint64_t size = map_entry(a, k)->number_of_pages * PAGE, last = va + size - 1;

		if (va & (PAGE - 1))
			return agent_fail_at(f, AGENT_E_PARAMS, va,
					     "a virtual address is not page-aligned");
		if (!agent_is_canonical(&pg, va) ||
		    (size && (!agent_is_canonical(&pg, last) || last < va)))
			return agent_fail_at(f, AGENT_E_PARAMS, va,
					     "a virtual range is not canonical");
		map_entry(a, k)->virtual_start = va;
	}
	status = agent_params_done(p, f);
	if (status != AGENT_OK)
		return status;
	for (k = 0; k < count; k++)
		if (!(seen & (1ULL << k)))
			return agent_fail_at(f, AGENT_E_PARAMS, map_entry(a, k)->physical_start,
					     "a runtime descriptor has no pair");

	/* The new addresses must map the regions: the firmware switches to them during the call. */
	for (k = 0; k < count; k++) {
		d = map_entry(a, k);
		if (!maps_to(a, &pg, d->virtual_start, d->physical_start,
			     d->number_of_pages * PAGE, &bad))
			return refuse(f, bad, UNMAPPED_VIRTUAL);
	}
	/* It runs at physical addresses until it returns (MMIO is only converted, not reached). */
	for (k = 0; k < count; k++) {
		d = map_entry(a, k);
		if ((d->type == EFI_RUNTIME_SERVICES_CODE || d->type == EFI_RUNTIME_SERVICES_DATA) &&
		    !maps_to(a, &pg, d->physical_start, d->physical_start,
			     d->number_of_pages * PAGE, &bad))
			return refuse(f, bad, UNMAPPED_IDENTITY);
	}
	status = sse_ready(a, f);
	if (status == AGENT_OK)
		status = service(a, &pg, RT_SET_VIRTUAL_ADDRESS_MAP, &fn, f);
	if (status != AGENT_OK)
		return status;

	uint64_t result = call(a, fn, count * efi->desc_size, efi->desc_size, efi->desc_version,
			       (uint64_t)a->efi_map, 0);

	if (result & EFI_ERROR_BIT)
		return efi_error(a, result, f);
	/* ST itself is not converted: it is where its region now is. */
	uint64_t st_va = efi->system_table, rt = 0;
	struct failure ignored;

	for (k = 0; k < count; k++) {
		d = map_entry(a, k);
		if (efi->system_table - d->physical_start < d->number_of_pages * PAGE)
			st_va = efi->system_table - d->physical_start + d->virtual_start;
	}
	a->efi_virtual = true;
	a->efi_map_size = count * efi->desc_size;
	a->efi_st_va = st_va;
	if (firmware_load(a, &pg, st_va + ST_RUNTIME_SERVICES, &rt, 8, &ignored) != AGENT_OK)
		rt = 0;
	mp_write_array(w, 3);
	mp_write_uint(w, result);
	mp_write_uint(w, st_va);
	mp_write_uint(w, rt);
	return AGENT_OK;
}
#endif

int agent_m_efi_get_time(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	struct efi_time *time = (struct efi_time *)a->efi_time;
	struct paging pg;
	uint64_t fn;
	int status = efi_ready(a, f);

	if (status == AGENT_OK)
		status = agent_params_done(p, f);
	if (status == AGENT_OK)
		status = prepare(a, &pg, RT_GET_TIME, &fn, f);
	if (status != AGENT_OK)
		return status;
	uint64_t result = call(a, fn, (uint64_t)time, 0, 0, 0, 0);

	if (result & EFI_ERROR_BIT)
		return efi_error(a, result, f);
	mp_write_array(w, 9);
	mp_write_uint(w, time->year);
	mp_write_uint(w, time->month);
	mp_write_uint(w, time->day);
	mp_write_uint(w, time->hour);
	mp_write_uint(w, time->minute);
	mp_write_uint(w, time->second);
	mp_write_uint(w, time->nanosecond);
	mp_write_int(w, time->time_zone);
	mp_write_uint(w, time->daylight);
	return AGENT_OK;
}

int agent_m_efi_get_variable(struct agent *a, struct params *p, struct mp_writer *w,
			     struct failure *f)
{
	struct paging pg;
	uint64_t fn, max = AGENT_EFI_DATA_MAX;
	int status = efi_ready(a, f);

	if (status == AGENT_OK)
		status = param_name(p, a->efi_name, f);
	if (status == AGENT_OK)
		status = param_guid(p, a->efi_guid, f);
	if (status == AGENT_OK)
		status = agent_param_uint(p, &max, true, f);
	if (status == AGENT_OK)
		status = agent_params_done(p, f);
	if (status == AGENT_OK && max > AGENT_EFI_DATA_MAX)
		status = agent_fail(f, AGENT_E_PARAMS, "max_size is at most 1024");
	if (status == AGENT_OK)
		status = prepare(a, &pg, RT_GET_VARIABLE, &fn, f);
	if (status != AGENT_OK)
		return status;
	a->efi_size = max;
	a->efi_attributes = 0;
	uint64_t result = call(a, fn, (uint64_t)a->efi_name, (uint64_t)a->efi_guid,
			       (uint64_t)&a->efi_attributes, (uint64_t)&a->efi_size,
			       (uint64_t)a->efi_data);

	if (result & EFI_ERROR_BIT)
		return efi_error(a, result, f);
	if (a->efi_size > max)
		return agent_fail(f, AGENT_E_INTERNAL, "the firmware returned more data than asked");
	mp_write_array(w, 2);
	mp_write_uint(w, a->efi_attributes);
	mp_write_bin(w, a->efi_data, a->efi_size);
	return AGENT_OK;
}

/* The request's name is the "?" form of the name the firmware gave last (same GUID)? */
static bool is_last_name(struct agent *a, const uint16_t *name)
{
	if (!a->efi_have_next)
		return false;
	for (unsigned i = 0; i < AGENT_EFI_NAME_MAX; i++) {
		uint16_t c = a->efi_next_name[i];

		if (name[i] != (c > 0x7f ? '?' : c))
			return false;
		if (!c)
			return true;
	}
	return false;
}

int agent_m_efi_next_variable_name(struct agent *a, struct params *p, struct mp_writer *w,
				   struct failure *f)
{
	struct paging pg;
	uint64_t fn;
	uint8_t guid[16];
	int status = efi_ready(a, f);

	if (status == AGENT_OK)
		status = param_name(p, a->efi_name, f);
	if (status == AGENT_OK)
		status = param_guid(p, guid, f);
	if (status == AGENT_OK)
		status = agent_params_done(p, f);
	if (status == AGENT_OK)
		status = prepare(a, &pg, RT_GET_NEXT_VARIABLE_NAME, &fn, f);
	if (status != AGENT_OK)
		return status;
	bool same_guid = true;

	for (unsigned i = 0; i < 16; i++)
		same_guid = same_guid && guid[i] == a->efi_next_guid[i];
	/* Names with non-ASCII characters went out with "?": continue from the raw one kept. */
	if (!(same_guid && is_last_name(a, a->efi_name))) {
		for (unsigned i = 0; i < AGENT_EFI_NAME_MAX; i++)
			a->efi_next_name[i] = a->efi_name[i];
		for (unsigned i = 0; i < 16; i++)
			a->efi_next_guid[i] = guid[i];
	}
	a->efi_have_next = false;
	a->efi_size = sizeof(a->efi_next_name);
	uint64_t result = call(a, fn, (uint64_t)&a->efi_size, (uint64_t)a->efi_next_name,
			       (uint64_t)a->efi_next_guid, 0, 0);

	if (result == EFI_NOT_FOUND) {
		mp_write_nil(w);
		return AGENT_OK;
	}
	if (result & EFI_ERROR_BIT)
		return efi_error(a, result, f);
	a->efi_have_next = true;
	char *name = (char *)a->efi_data;
	unsigned len = 0;

	while (len < AGENT_EFI_NAME_MAX - 1 && a->efi_next_name[len]) {
		uint16_t c = a->efi_next_name[len];

		name[len++] = c > 0x7f ? '?' : (char)c;
	}
	a->efi_next_name[len] = 0;
	mp_write_array(w, 2);
	mp_write_str(w, name, len);
	mp_write_bin(w, a->efi_next_guid, 16);
	return AGENT_OK;
}
