/*
 * The whole agent on the host: requests on stdin, replies on stdout, console
 * input echoed to stderr. Physical memory and CPU state come from an image
 * file written by tests/unit/test_agent_host.py:
 *
 *	"KAGENTIM" magic, then little-endian u64s: ram_size, cr0, cr3, cr4, efer,
 *	pat, maxphyaddr, page_count; then page_count records of a u64 physical
 *	page address and its 4096 bytes. Pages below ram_size that are not in
 *	the file read as zeros; anything at or above ram_size is a fault.
 *
 * The magic "KAGENTEF" is the same machine booted through UEFI: the agent
 * gets a fake firmware (below) whose runtime services are host functions
 * called through the real MS x64 thunk, agent_x86_efi_call.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent.h"

/*
 * tests/unit/agent_host.py compiles host_agent.c, agent.c and the codec
 * only: the UEFI methods and the x86 thunk come in here.
 */
#include "../agent/agent_efi.c"
#include "../agent/agent_x86.c"

struct page {
	uint64_t address;
	uint8_t data[4096];
};

static struct page *pages;
static uint64_t page_count, ram_size;
static struct agent_cpu cpu;
static uint8_t rx_buf[65536];
static size_t rx_len, rx_pos;

static int host_rx(void *ctx)
{
	(void)ctx;
	if (rx_pos == rx_len) {
		ssize_t n = read(0, rx_buf, sizeof(rx_buf));

		if (n <= 0)
			exit(0);
		rx_len = (size_t)n;
		rx_pos = 0;
	}
	return rx_buf[rx_pos++];
}

static void host_tx(void *ctx, const uint8_t *buf, size_t len)
{
	(void)ctx;
	while (len) {
		ssize_t n = write(1, buf, len);

		if (n <= 0)
			exit(1);
		buf += n;
		len -= (size_t)n;
	}
}

static const struct page *find_page(uint64_t address)
{
	for (uint64_t i = 0; i < page_count; i++)
		if (pages[i].address == address)
			return &pages[i];
	return NULL;
}

static int host_read_phys(void *ctx, uint64_t pa, void *buf, size_t len)
{
	uint8_t *out = buf;

	(void)ctx;
	if (pa + len < pa || pa + len > ram_size)
		return AGENT_E_FAULT;
	while (len) {
		uint64_t offset = pa & 0xfff;
		size_t chunk = 4096 - offset < len ? 4096 - offset : len;
		const struct page *p = find_page(pa - offset);

		if (p)
			memcpy(out, p->data + offset, chunk);
		else
			memset(out, 0, chunk);
		out += chunk;
		pa += chunk;
		len -= chunk;
	}
	return AGENT_OK;
}

/* Remaps: writes land in the page list (a page is added on first write). */
static uint64_t page_capacity, pool_next;

static struct page *page_for_write(uint64_t address)
{
	for (uint64_t i = 0; i < page_count; i++)
		if (pages[i].address == address)
			return &pages[i];
	if (page_count == page_capacity)
		return NULL;
	pages[page_count].address = address;
	memset(pages[page_count].data, 0, 4096);
	return &pages[page_count++];
}

static int host_write_phys(void *ctx, uint64_t pa, const void *buf, size_t len)
{
	struct page *p;

	(void)ctx;
	if (pa + len < pa || pa + len > ram_size || (pa & 0xfff) + len > 4096)
		return AGENT_E_FAULT;
	p = page_for_write(pa & ~0xfffULL);
	if (!p)
		return AGENT_E_FAULT;
	memcpy(p->data + (pa & 0xfff), buf, len);
	return AGENT_OK;
}

/* New tables come from the top of RAM down (the tests leave it free). */
static int host_alloc_table(void *ctx, uint64_t *pa)
{
	struct page *p;

	(void)ctx;
	pool_next += 4096;
	if (pool_next > 64 * 4096)
		return AGENT_E_FAULT;
	p = page_for_write(ram_size - pool_next);
	if (!p)
		return AGENT_E_FAULT;
	memset(p->data, 0, 4096);
	*pa = p->address;
	return AGENT_OK;
}

static int host_read_cpu(void *ctx, struct agent_cpu *out)
{
	(void)ctx;
	*out = cpu;
	return AGENT_OK;
}

static void host_console(void *ctx, uint8_t byte)
{
	(void)ctx;
	fputc(byte, stderr);
}

/* -- a fake UEFI firmware -------------------------------------------------------
 *
 * Its memory is a memfd mapped at FAKE_BASE, which is also its "physical"
 * address (the tests' page tables identity-map it). SetVirtualAddressMap
 * maps the runtime regions again where the virtual map says, converts the
 * pointers, and unmaps FAKE_BASE: after it, an access at a physical address
 * is a crash, as a firmware reached without an identity map would be.
 * The MMIO region (the pflash in OVMF) is only described, never touched.
 */
#define EFIAPI __attribute__((ms_abi))
#define EFI_ERR(n) ((1ULL << 63) | (n))
#define FAKE_BASE 0x40000000ULL
#define FAKE_SIZE 0x6000ULL
#define FAKE_RTCODE FAKE_BASE /* 2 pages: the entry points (stubs that jump to host code) */
#define FAKE_BSDATA (FAKE_BASE + 0x2000) /* 1 page, not runtime */
#define FAKE_RTDATA (FAKE_BASE + 0x3000) /* 3 pages: ST at +0x18, RT at +0x1100 */
#define FAKE_ST (FAKE_RTDATA + 0x18)
#define FAKE_RT (FAKE_RTDATA + 0x1100)
#define FAKE_MMIO 0xffc00000ULL /* 4 pages */
#define FAKE_DESC_SIZE 48

static int fake_fd = -1;
static bool fake_virtual;
/* Where SetVirtualAddressMap mapped the runtime RAM regions again (fake_uefi_reset undoes it). */
static void *fake_mapped[2];
static uint64_t fake_mapped_size[2];
static uint8_t fake_map[5 * FAKE_DESC_SIZE] __attribute__((aligned(8)));
static uint8_t fake_memattr[16 + FAKE_DESC_SIZE] __attribute__((aligned(8)));
static struct agent_efi fake_efi;

static const uint8_t global_guid[16] = { 0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11,
					 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c };
static const uint8_t vendor_guid[16] = { 0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56,
					 0x9a, 0xbc, 0xde, 0xf0, 0x11, 0x22, 0x33, 0x44 };
static uint8_t big_data[1500];

static const struct fake_variable {
	const uint16_t *name;
	const uint8_t *guid;
	uint32_t attributes;
	const void *data;
	uint64_t size;
} fake_variables[] = {
	{ (const uint16_t *)u"PlatformLang", global_guid, 7, "en-US", 6 },
	{ (const uint16_t *)u"Caf\u00e9", vendor_guid, 6, "\x01\x02\x03", 3 },
	{ (const uint16_t *)u"BigOne", vendor_guid, 7, big_data, sizeof(big_data) },
};
#define FAKE_VARIABLES (sizeof(fake_variables) / sizeof(fake_variables[0]))

static void put64(uint64_t address, uint64_t value)
{
	memcpy((void *)address, &value, 8);
}

static uint64_t get64(uint64_t address)
{
	uint64_t value;

	memcpy(&value, (const void *)address, 8);
	return value;
}

/* The MS ABI wants RSP 16-byte aligned at the call: RBP after the prologue is then aligned too. */
static bool misaligned(void *frame)
{
	return (uint64_t)frame & 15;
}

static uint64_t ucs2_len(const uint16_t *s)
{
	uint64_t n = 0;

	while (s[n])
		n++;
	return n;
}

static bool ucs2_eq(const uint16_t *a, const uint16_t *b)
{
	while (*a && *a == *b)
		a++, b++;
	return *a == *b;
}

static EFIAPI uint64_t fake_get_time(uint8_t *time, void *capabilities)
{
	static const uint8_t when[16] = {
		0xea, 0x07, 11, 25, 19, 46, 2, 0,	/* 2026-11-25 19:46:02 */
		0x15, 0xcd, 0x5b, 0x07,			/* 123456789 ns */
		0xc4, 0xff, 1, 0,			/* TimeZone -60, Daylight 1 */
	};

	if (misaligned(__builtin_frame_address(0)))
		return EFI_ERR(21); /* EFI_ABORTED: the thunk did not align the stack */
	if (!time || capabilities)
		return EFI_ERR(2);
	memcpy(time, when, sizeof(when));
	return 0;
}

static EFIAPI uint64_t fake_get_variable(const uint16_t *name, const uint8_t *guid,
					 uint32_t *attributes, uint64_t *size, void *data)
{
	if (misaligned(__builtin_frame_address(0)))
		return EFI_ERR(21);
	if (!name || !guid || !size)
		return EFI_ERR(2);
	if (ucs2_eq(name, (const uint16_t *)u"Weird"))
		return EFI_ERR(0x123); /* a status with no name */
	for (unsigned i = 0; i < FAKE_VARIABLES; i++) {
		const struct fake_variable *v = &fake_variables[i];

		if (!ucs2_eq(name, v->name) || memcmp(guid, v->guid, 16))
			continue;
		if (*size < v->size) {
			*size = v->size;
			return EFI_ERR(5);
		}
		memcpy(data, v->data, v->size);
		*size = v->size;
		if (attributes)
			*attributes = v->attributes;
		return 0;
	}
	return EFI_ERR(14);
}

static EFIAPI uint64_t fake_get_next_variable_name(uint64_t *size, uint16_t *name, uint8_t *guid)
{
	unsigned next = 0;

	if (misaligned(__builtin_frame_address(0)))
		return EFI_ERR(21);
	if (name[0]) {
		while (next < FAKE_VARIABLES && (!ucs2_eq(name, fake_variables[next].name) ||
						 memcmp(guid, fake_variables[next].guid, 16)))
			next++;
		if (next == FAKE_VARIABLES)
			return EFI_ERR(2); /* not a variable: UEFI 2.8 says EFI_INVALID_PARAMETER */
		next++;
	}
	if (next == FAKE_VARIABLES)
		return EFI_ERR(14);
	uint64_t need = 2 * (ucs2_len(fake_variables[next].name) + 1);

	if (*size < need) {
		*size = need;
		return EFI_ERR(5);
	}
	memcpy(name, fake_variables[next].name, need);
	memcpy(guid, fake_variables[next].guid, 16);
	*size = need;
	return 0;
}

static uint64_t fake_convert(const uint8_t *map, uint64_t count, uint64_t pa)
{
	for (uint64_t i = 0; i < count; i++) {
		const struct efi_descriptor *d = (const void *)(map + i * FAKE_DESC_SIZE);

		if (pa - d->physical_start < d->number_of_pages * 4096)
			return d->virtual_start + (pa - d->physical_start);
	}
	return pa;
}

static EFIAPI uint64_t fake_set_virtual_address_map(uint64_t size, uint64_t desc_size,
						    uint32_t version, const uint8_t *map)
{
	void *done[2] = { NULL, NULL };
	uint64_t sizes[2] = { 0, 0 };
	unsigned mapped = 0;

	if (misaligned(__builtin_frame_address(0)))
		return EFI_ERR(21);
	if (fake_virtual)
		return EFI_ERR(3);
	if (desc_size != FAKE_DESC_SIZE || version != 1 || size != 3 * FAKE_DESC_SIZE)
		return EFI_ERR(2);
	for (uint64_t i = 0; i < 3; i++) {
		const struct efi_descriptor *d = (const void *)(map + i * FAKE_DESC_SIZE);
		const struct efi_descriptor *kept = NULL;

		for (unsigned j = 0; j < 5; j++) {
			const struct efi_descriptor *k = (const void *)(fake_map + j * FAKE_DESC_SIZE);

			if (k->physical_start == d->physical_start)
				kept = k;
		}
		/* The whole descriptor, DescriptorSize apart: the 8 bytes past the 40 too. */
		if (!kept || !(kept->attribute >> 63) ||
		    memcmp((const uint8_t *)kept + 24, (const uint8_t *)d + 24, FAKE_DESC_SIZE - 24) ||
		    kept->type != d->type)
			return EFI_ERR(2);
		if (d->physical_start == FAKE_MMIO)
			continue;
		void *at = mmap((void *)d->virtual_start, d->number_of_pages * 4096,
				PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED_NOREPLACE,
				fake_fd, (off_t)(d->physical_start - FAKE_BASE));

		if (at == MAP_FAILED || at != (void *)d->virtual_start) {
			if (at != MAP_FAILED)
				munmap(at, d->number_of_pages * 4096);
			for (unsigned j = 0; j < mapped; j++)
				munmap(done[j], sizes[j]);
			return EFI_ERR(2);
		}
		sizes[mapped] = d->number_of_pages * 4096;
		done[mapped++] = at;
	}
	/* ConvertPointer on what the firmware keeps: ST->RuntimeServices and RT's entry points. */
	for (unsigned off = 24; off <= 80; off += 8)
		if (get64(FAKE_RT + off))
			put64(FAKE_RT + off, fake_convert(map, 3, get64(FAKE_RT + off)));
	put64(FAKE_ST + 88, fake_convert(map, 3, FAKE_RT));
	munmap((void *)FAKE_BASE, FAKE_SIZE);
	for (unsigned j = 0; j < mapped; j++) {
		fake_mapped[j] = done[j];
		fake_mapped_size[j] = sizes[j];
	}
	fake_virtual = true;
	return 0;
}

static void fake_descriptor(unsigned i, uint32_t type, uint64_t start, uint64_t pages,
			    uint64_t attribute)
{
	struct efi_descriptor d = { .type = type, .physical_start = start,
				    .number_of_pages = pages, .attribute = attribute };

	memcpy(fake_map + i * FAKE_DESC_SIZE, &d, sizeof(d));
	memset(fake_map + i * FAKE_DESC_SIZE + sizeof(d), 0xa5, FAKE_DESC_SIZE - sizeof(d));
}

/* An entry point in RTCode: movabs $fn, %rax; jmp *%rax. */
static uint64_t fake_stub(unsigned i, void *fn)
{
	uint8_t *stub = (uint8_t *)(FAKE_RTCODE + 16 * i);
	uint64_t target = (uint64_t)fn;

	stub[0] = 0x48;
	stub[1] = 0xb8;
	memcpy(stub + 2, &target, 8);
	stub[10] = 0xff;
	stub[11] = 0xe0;
	return (uint64_t)stub;
}

static const struct agent_efi *fake_uefi(void)
{
	const uint64_t runtime = 1ULL << 63;

	fake_fd = memfd_create("fake-uefi", 0);
	if (fake_fd < 0 || ftruncate(fake_fd, FAKE_SIZE) ||
	    mmap((void *)FAKE_BASE, FAKE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
		 MAP_SHARED | MAP_FIXED_NOREPLACE, fake_fd, 0) != (void *)FAKE_BASE) {
		perror("host_agent: the fake firmware's memory");
		exit(2);
	}
	for (unsigned i = 0; i < sizeof(big_data); i++)
		big_data[i] = (uint8_t)i;
	fake_descriptor(0, 7, 0x1000000, 16, 0xf);
	fake_descriptor(1, 5, FAKE_RTCODE, 2, runtime | 0xf);
	fake_descriptor(2, 4, FAKE_BSDATA, 1, 0xf);
	fake_descriptor(3, 6, FAKE_RTDATA, 3, runtime | 0xf);
	fake_descriptor(4, 11, FAKE_MMIO, 4, runtime | 1);
	put64(FAKE_ST, 0x5453595320494249ULL);
	put64(FAKE_ST + 32, 0x10203);
	put64(FAKE_ST + 88, FAKE_RT);
	put64(FAKE_RT, 0x56524553544e5552ULL);
	put64(FAKE_RT + 24, fake_stub(0, (void *)fake_get_time));
	put64(FAKE_RT + 56, fake_stub(1, (void *)fake_set_virtual_address_map));
	put64(FAKE_RT + 72, fake_stub(2, (void *)fake_get_variable));
	put64(FAKE_RT + 80, fake_stub(3, (void *)fake_get_next_variable_name));
	memset(fake_memattr, 0, sizeof(fake_memattr));
	fake_memattr[0] = 1; /* Version 1, one entry */
	fake_memattr[4] = 1;
	fake_memattr[8] = FAKE_DESC_SIZE;
	fake_efi = (struct agent_efi){
		.system_table = FAKE_ST,
		.memmap = fake_map,
		.memmap_size = sizeof(fake_map),
		.desc_size = FAKE_DESC_SIZE,
		.desc_version = 1,
		.memattr = fake_memattr,
		.memattr_size = sizeof(fake_memattr),
	};
	return &fake_efi;
}

/*
 * The firmware as fake_uefi left it, for a caller that runs many sessions in
 * one process (kernel-agent/fuzz/fuzz_dispatch.c): after SetVirtualAddressMap
 * its memory is back at FAKE_BASE with physical pointers.
 */
static __attribute__((unused)) const struct agent_efi *fake_uefi_reset(void)
{
	if (fake_fd < 0)
		return fake_uefi();
	if (!fake_virtual)
		return &fake_efi;
	for (unsigned j = 0; j < 2; j++)
		if (fake_mapped[j])
			munmap(fake_mapped[j], fake_mapped_size[j]);
	fake_mapped[0] = fake_mapped[1] = NULL;
	close(fake_fd);
	fake_virtual = false;
	return fake_uefi();
}

static uint64_t u64(FILE *f)
{
	uint8_t b[8];
	uint64_t v = 0;

	if (fread(b, 1, 8, f) != 8) {
		fprintf(stderr, "host_agent: truncated image\n");
		exit(2);
	}
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | b[i];
	return v;
}

int main(int argc, char **argv)
{
	static struct agent agent;
	static struct agent_ops ops = {
		.rx = host_rx,
		.tx = host_tx,
		.read_phys = host_read_phys,
		.read_cpu = host_read_cpu,
		.console_input = host_console,
		.write_phys = host_write_phys,
		.alloc_table = host_alloc_table,
	};
	char magic[8];
	FILE *f;

	if (argc != 2 || !(f = fopen(argv[1], "rb"))) {
		fprintf(stderr, "usage: host_agent IMAGE\n");
		return 2;
	}
	if (fread(magic, 1, 8, f) != 8 ||
	    (memcmp(magic, "KAGENTIM", 8) && memcmp(magic, "KAGENTEF", 8))) {
		fprintf(stderr, "host_agent: not an image\n");
		return 2;
	}
	if (!memcmp(magic, "KAGENTEF", 8)) {
		ops.efi = fake_uefi();
		ops.efi_call = agent_x86_efi_call;
	}
	ram_size = u64(f);
	cpu.cr0 = u64(f);
	cpu.cr3 = u64(f);
	cpu.cr4 = u64(f);
	cpu.efer = u64(f);
	cpu.pat = u64(f);
	cpu.maxphyaddr = (uint8_t)u64(f);
	cpu.rsp = 0xffff800000001000ULL;
	page_count = u64(f);
	page_capacity = page_count + 256;
	pages = calloc(page_capacity, sizeof(*pages));
	for (uint64_t i = 0; i < page_count; i++) {
		pages[i].address = u64(f);
		if (fread(pages[i].data, 1, 4096, f) != 4096) {
			fprintf(stderr, "host_agent: truncated page\n");
			return 2;
		}
	}
	fclose(f);
	/* The boot nonce the tests give this "boot" (absent: none, as a port without one). */
	const char *nonce = getenv("HOST_AGENT_BOOT_NONCE");
	if (nonce)
		ops.boot_nonce = strtoull(nonce, NULL, 0);
	if (agent_init(&agent, NULL, NULL) != AGENT_E_ARG) {
		fprintf(stderr, "host_agent: agent_init accepted no ops\n");
		return 3;
	}
	int status = agent_init(&agent, &ops, NULL);

	if (status != AGENT_OK) {
		fprintf(stderr, "host_agent: %s\n", agent_strerror(status));
		return 3;
	}
	for (;;)
		agent_poll(&agent);
}
