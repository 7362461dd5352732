/*
 * The whole agent on the host: requests on stdin, replies on stdout, console
 * input echoed to stderr. Physical memory and CPU state come from an image
 * file written by tests/unit/test_agent_host.py:
 *
 *	"KAGENTIM" magic, then little-endian u64s: ram_size, cr0, cr3, cr4, efer,
 *	pat, maxphyaddr, page_count; then page_count records of a u64 physical
 *	page address and its 4096 bytes. Pages below ram_size that are not in
 *	the file read as zeros; anything at or above ram_size is a fault.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

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
	static const struct agent_ops ops = {
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
	if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "KAGENTIM", 8)) {
		fprintf(stderr, "host_agent: not an image\n");
		return 2;
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
