/*
 * libFuzzer harness over the whole agent: frames in through agent_feed, the
 * request dispatcher, every method, replies out, on a fake machine.
 *
 * The machine is host_agent.c's (included here, its main renamed): physical
 * memory is a list of 4 KiB pages below 2 GiB (absent pages read as zeros,
 * anything above is a fault), page tables built below like
 * tests/unit/test_agent_host.py's demo_like_tables and efi_tables, a CPU
 * state whose stack, GDT, TSS and IDT live in that memory, and the fake UEFI
 * firmware. Every hook the agent has is given a fake that stays inside this
 * machine: writes go to the page list (never to host memory), the stack is
 * "moved" by changing the fake RSP, CR3 and the descriptor registers are
 * fields of the fake CPU. So the mutating methods run for real, and the
 * fuzzer cannot escape the fake. The machine is restored after each input.
 *
 * Input: one configuration byte, then requests separated by C1 C1 (0xc1 is
 * never a msgpack type byte). Configuration bits:
 *	0: LA57 (5-level paging)	1: EFER.NXE off
 *	2-3: MAXPHYADDR 52, 40, 46 or "0" (which means 52)
 *	4: no remap hooks (write_phys, alloc_table)	5: no read_cpu
 *	6: booted through UEFI (the fake firmware)	7: the rest is raw line bytes, not requests
 * Each request of 1..508 bytes is framed (COBS, CRC) and fed a byte at a
 * time; the harness checks that it got exactly one reply frame, and that the
 * reply is one msgpack [1, id, error, result] with the request's id (or, link
 * 2, a chunk of it or a NAK). After each request an ACK for part of its reply
 * ([3, id, offset, size]) must get one frame too: the NAK and chunk paths.
 */
#define main host_agent_main
#include "../tests/host_agent.c"
#undef main

#include "agent_msgpack.h"
#include "agent_wire.h"
#include "fuzz_common.h"

#define P 1ULL
#define RW (1ULL << 1)
#define US (1ULL << 2)
#define PWT (1ULL << 3)
#define PCD (1ULL << 4)
#define PS (1ULL << 7)
#define G (1ULL << 8)
#define PAT_PTE (1ULL << 7)
#define PAT_LARGE (1ULL << 12)
#define NX (1ULL << 63)

#define RAM_SIZE (1ULL << 31)
#define ROOT 0x100000ULL
#define ROOT5 0x0fe000ULL /* a PML5 whose first and last entries lead to ROOT */
#define DIRECT 0xffff888000000000ULL
#define CODE 0xffffffff80100000ULL
#define STACK_PA 0x10000ULL
#define GDT_PA 0x20000ULL
#define TSS_PA 0x21000ULL
#define IDT_PA 0x22000ULL
#define NEW 0x200000000000ULL
#define SEPARATOR 0xc1

static uint64_t next_table = ROOT + 0x1000;
static uint64_t template_count;
static struct page *template_pages;
static bool *dirty;
static struct agent_cpu base_cpu;

/*
 * host_read_phys with an index from page number to the page list (1 + its
 * place, 0 for none): the walk and the protection checks read every entry of
 * every table, and host_agent.c's list is searched from the start each time.
 * The index follows the list: pages are only added by the two hooks below.
 */
static uint32_t *page_index;
static uint64_t indexed; /* pages[0..indexed) are in the index */

static void index_new_pages(void)
{
	for (; indexed < page_count; indexed++)
		page_index[pages[indexed].address >> 12] = (uint32_t)indexed + 1;
}

static void unindex_added_pages(void)
{
	while (indexed > template_count)
		page_index[pages[--indexed].address >> 12] = 0;
}

static const struct page *lookup(uint64_t address)
{
	uint32_t i = page_index[address >> 12];

	return i ? &pages[i - 1] : NULL;
}

static void w64(uint64_t pa, uint64_t v)
{
	CHECK(host_write_phys(NULL, pa, &v, 8) == AGENT_OK);
}

static uint64_t r64(uint64_t pa)
{
	uint64_t v;

	CHECK(host_read_phys(NULL, pa, &v, 8) == AGENT_OK);
	return v;
}

static void map(uint64_t va, uint64_t pa, uint64_t size, uint64_t flags)
{
	int leaf = size == (1ULL << 30) ? 3 : size == (1ULL << 21) ? 2 : 1;
	uint64_t table = ROOT;

	for (int level = 4; level > leaf; level--) {
		uint64_t slot = table + 8 * ((va >> (12 + 9 * (level - 1))) & 0x1ff);
		uint64_t e = r64(slot);

		if (!(e & P)) {
			e = next_table | P | RW | US;
			next_table += 0x1000;
			w64(slot, e);
		}
		table = e & 0x000ffffffffff000ULL;
	}
	w64(table + 8 * ((va >> (12 + 9 * (leaf - 1))) & 0x1ff), pa | flags | (leaf > 1 ? PS : 0));
}

/* tests/unit/test_agent_host.py: demo_like_tables, efi_tables, fuzz_efi_agent's MMIO. */
static void build_machine(void)
{
	page_capacity = 4096;
	pages = calloc(page_capacity, sizeof(*pages));
	ram_size = RAM_SIZE;
	page_for_write(ROOT);
	for (uint64_t i = 1; i < 40; i++)
		if (i != 17)
			map(i << 12, i << 12, 4096, P | RW | (i < 30 ? US : 0));
	for (uint64_t i = 1; i < 8; i++)
		map(i << 21, i << 21, 1ULL << 21, P | RW);
	for (uint64_t i = 0; i < 4; i++)
		map(DIRECT + (i << 21), i << 21, 1ULL << 21, P | RW | G | NX);
	map(0xffffc90000000000ULL, 0xc0000000ULL, 1ULL << 30, P | RW | PWT | PCD | G | NX);
	map(0xffffc90040000000ULL, 0x80000000ULL, 1ULL << 30, P | RW | PAT_LARGE | NX);
	for (uint64_t i = 0; i < 13; i++) {
		uint64_t flags = i < 5 ? P | G : i < 8 ? P | G | NX : i < 12 ? P | RW | G | NX : P | PAT_PTE;

		map(CODE + (i << 12), 0x100000 + (i << 12), 4096, flags);
	}
	map(0x7f0000000000ULL, 0x400000, 4096, P | RW | US);
	w64(ROOT + 8 * 0xfe, r64(ROOT + 8 * 0xfe) | NX);
	/* The fake firmware's regions, identity-mapped and at NEW + PA. */
	static const uint64_t runtime[][2] = { { FAKE_RTCODE, 2 }, { FAKE_RTDATA, 3 }, { FAKE_MMIO, 4 } };
	for (unsigned r = 0; r < 3; r++)
		for (uint64_t i = 0; i < runtime[r][1]; i++) {
			uint64_t page = runtime[r][0] + (i << 12);

			map(page, page, 4096, P | RW | (runtime[r][0] == FAKE_MMIO ? NX : 0));
			map(NEW + page, page, 4096, P | RW | (runtime[r][0] == FAKE_RTCODE ? 0 : NX));
		}
	w64(ROOT5, ROOT | P | RW | US);
	w64(ROOT5 + 8 * 511, ROOT | P | RW | US);

	/* A stack with a frame-pointer chain, a GDT with a TSS descriptor, an IDT. */
	w64(STACK_PA + 0xf20, DIRECT + STACK_PA + 0xf80);
	w64(STACK_PA + 0xf80, 0);
	w64(GDT_PA + 8, 0x00af9a000000ffffULL);
	w64(GDT_PA + 16, 0x00cf92000000ffffULL);
	uint64_t tss = DIRECT + TSS_PA;

	w64(GDT_PA + 0x28, 0x67 | ((tss & 0xffffff) << 16) | (0x89ULL << 40) |
				   (((tss >> 24) & 0xff) << 56));
	w64(GDT_PA + 0x30, tss >> 32);
	w64(IDT_PA, 0x8e0000100000ULL);
	base_cpu = (struct agent_cpu){
		.cr0 = 0x80010011, .cr3 = ROOT, .cr4 = 0x20 | 0x200, .efer = 0xd00,
		.pat = 0x0007040600070406ULL, .maxphyaddr = 52,
		.rip = CODE + 0x40, .rsp = DIRECT + STACK_PA + 0xf00,
		.rbp = DIRECT + STACK_PA + 0xf20, .rflags = 0x246,
		.gdtr_base = DIRECT + GDT_PA, .gdtr_limit = 0x37,
		.idtr_base = DIRECT + IDT_PA, .idtr_limit = 0xfff,
		.cs = 8, .ss = 16, .ds = 16, .es = 16, .tr = 0x28,
	};
	template_count = page_count;
	template_pages = malloc(page_count * sizeof(*pages));
	memcpy(template_pages, pages, page_count * sizeof(*pages));
	dirty = calloc(page_count, sizeof(*dirty));
}

static void restore_machine(void)
{
	for (uint64_t i = 0; i < template_count; i++)
		if (dirty[i]) {
			memcpy(&pages[i], &template_pages[i], sizeof(*pages));
			dirty[i] = false;
		}
	unindex_added_pages();
	page_count = template_count;
	pool_next = 0;
}

/* -- the hooks, all inside the fake machine ---------------------------------------- */

static int fuzz_read_phys(void *ctx, uint64_t pa, void *buf, size_t len)
{
	uint8_t *out = buf;

	(void)ctx;
	if (pa + len < pa || pa + len > ram_size)
		return AGENT_E_FAULT;
	while (len) {
		uint64_t offset = pa & 0xfff;
		size_t chunk = 4096 - offset < len ? 4096 - offset : len;
		const struct page *p = lookup(pa - offset);

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

static int fuzz_write_phys(void *ctx, uint64_t pa, const void *buf, size_t len)
{
	const struct page *p = pa < ram_size ? lookup(pa & ~0xfffULL) : NULL;

	if (p && p < pages + template_count)
		dirty[p - pages] = true;
	int status = host_write_phys(ctx, pa, buf, len);

	index_new_pages();
	return status;
}

static int fuzz_alloc_table(void *ctx, uint64_t *pa)
{
	int status = host_alloc_table(ctx, pa);

	index_new_pages();
	return status;
}

static uint64_t irq_depth;

static uint64_t fuzz_irq_save(void *ctx)
{
	(void)ctx;
	return ++irq_depth;
}

static void fuzz_irq_restore(void *ctx, uint64_t saved)
{
	(void)ctx;
	CHECK(saved == irq_depth);
	irq_depth--;
}

static void fuzz_flush_tlb(void *ctx, uint64_t va, bool all)
{
	(void)ctx, (void)va, (void)all;
}

static uint64_t fuzz_phys_to_virt(void *ctx, uint64_t pa)
{
	(void)ctx;
	return DIRECT + pa;
}

static void fuzz_rebase_stack(int64_t delta, uint64_t lo, uint64_t hi)
{
	CHECK(cpu.rsp >= lo && cpu.rsp < hi);
	cpu.rsp += (uint64_t)delta;
	if (cpu.rbp >= lo && cpu.rbp < hi)
		cpu.rbp += (uint64_t)delta;
}

static int fuzz_load_descriptors(void *ctx, uint64_t gdt, uint64_t idt, uint64_t tss)
{
	(void)ctx, (void)tss;
	cpu.gdtr_base = gdt;
	cpu.idtr_base = idt;
	return AGENT_OK;
}

static int fuzz_write_cr3(void *ctx, uint64_t cr3)
{
	(void)ctx;
	cpu.cr3 = cr3;
	return AGENT_OK;
}

/* -- replies ------------------------------------------------------------------------ */

static struct agent_frame_decoder replies;
static uint8_t replies_buf[AGENT_COBS_MAX(AGENT_MAX_FRAME)];
static size_t reply_count;
static bool expect_id;
static uint64_t expected_id;

static bool verbose; /* FUZZ_DISPATCH_VERBOSE=1: every reply on stderr, as hex */

static void on_reply(void *ctx, const uint8_t *body, size_t len)
{
	struct mp_reader r;
	struct mp_item item;

	(void)ctx;
	reply_count++;
	if (verbose) {
		for (size_t i = 0; i < len; i++)
			fprintf(stderr, "%02x", body[i]);
		fprintf(stderr, "\n");
	}
	mp_reader_init(&r, body, len);
	CHECK(mp_read(&r, &item) && item.type == MP_ARRAY);
	uint32_t n = item.v.n;

	CHECK(mp_read(&r, &item) && item.type == MP_UINT);
	/* A reply [1, id, error, result], a NAK [2, id, known], a chunk [4, id, off, total, bin]. */
	CHECK((item.v.u == 1 && n == 4) || (item.v.u == 2 && n == 3) || (item.v.u == 4 && n == 5));
	uint64_t type = item.v.u;

	CHECK(mp_read(&r, &item) && item.type == MP_UINT);
	CHECK(!expect_id || type == 2 || item.v.u == expected_id);
	if (type == 4) {
		struct mp_item offset, total, data;

		CHECK(mp_read(&r, &offset) && offset.type == MP_UINT);
		CHECK(mp_read(&r, &total) && total.type == MP_UINT);
		CHECK(mp_read(&r, &data) && data.type == MP_BIN && r.pos == len);
		CHECK(offset.v.u + data.v.bytes.len <= total.v.u && total.v.u <= AGENT_MAX_FRAME);
		CHECK(data.v.bytes.len <= AGENT_CHUNK_MAX);
		return;
	}
	for (uint32_t i = 2; i < n; i++)
		CHECK(mp_skip(&r));
	CHECK(r.pos == len);
}

static void on_reply_text(void *ctx, uint8_t byte)
{
	(void)ctx, (void)byte;
	CHECK(!"the agent wrote bytes outside a frame");
}

static void fuzz_tx(void *ctx, const uint8_t *buf, size_t len)
{
	(void)ctx;
	for (size_t i = 0; i < len; i++)
		agent_frame_decoder_feed(&replies, buf[i]);
}

static void fuzz_console(void *ctx, uint8_t byte)
{
	(void)ctx, (void)byte;
}

/* The id a well-formed request carries ([0, id, ...]), so the reply can be checked against it. */
static bool request_id(const uint8_t *body, size_t len, uint64_t *id)
{
	struct mp_reader r;
	struct mp_item item;

	mp_reader_init(&r, body, len);
	if (!mp_read(&r, &item) || item.type != MP_ARRAY || item.v.n != 4)
		return false;
	if (!mp_read(&r, &item) || item.type != MP_UINT || item.v.u != 0)
		return false;
	if (!mp_read(&r, &item) || item.type != MP_UINT || item.v.u > 0xffffffffULL)
		return false;
	*id = item.v.u;
	return true;
}

static void send_frame(struct agent *a, const uint8_t *body, size_t len);

/* After each request, an ACK for the reply's middle: one frame back (a chunk, the whole
 * reply, or a NAK when the agent keeps no reply by that id). */
static void send_ack(struct agent *a, uint64_t id, uint64_t offset, uint64_t size)
{
	uint8_t body[32];
	struct mp_writer w;

	mp_writer_init(&w, body, sizeof(body));
	mp_write_array(&w, 4);
	mp_write_uint(&w, 3);
	mp_write_uint(&w, id);
	mp_write_uint(&w, offset);
	mp_write_uint(&w, size);
	bool had = expect_id;

	expect_id = false;
	send_frame(a, body, w.len);
	expect_id = had;
}

static void send_request(struct agent *a, const uint8_t *body, size_t len)
{
	expect_id = request_id(body, len, &expected_id);
	send_frame(a, body, len);
	if (len && len <= AGENT_MAX_REQUEST - 4 && expect_id)
		send_ack(a, expected_id, (len * 7) % 600, 16 + len % 2000);
}

/* A frame whose body begins with a whole frame (a prefix and its CRC at a COBS block's end). */
static size_t probe_frames, probe_len;

static void on_probe(void *ctx, const uint8_t *body, size_t len)
{
	(void)ctx, (void)body;
	if (probe_frames++ == 0)
		probe_len = len;
}

static bool splits(const uint8_t *line, size_t n, size_t len)
{
	static uint8_t buf[AGENT_COBS_MAX(AGENT_MAX_REQUEST)];
	struct agent_frame_decoder d;

	agent_frame_decoder_init(&d, buf, AGENT_MAX_REQUEST, on_probe, NULL, NULL);
	probe_frames = 0;
	for (size_t i = 0; i < n; i++)
		agent_frame_decoder_feed(&d, line[i]);
	return probe_frames != 1 || probe_len != len;
}

static void send_frame(struct agent *a, const uint8_t *body, size_t len)
{
	static uint8_t frame[AGENT_MAX_REQUEST + 4];
	static uint8_t line[AGENT_COBS_MAX(AGENT_MAX_REQUEST) + 2];
	size_t n;

	if (len == 0 || len > AGENT_MAX_REQUEST - 4)
		return;
	memcpy(frame, body, len);
	uint32_t crc = agent_crc32(0, frame, len);

	for (int i = 0; i < 4; i++)
		frame[len + i] = (uint8_t)(crc >> (8 * i));
	line[0] = 0;
	n = agent_cobs_encode(frame, len + 4, line + 1, sizeof(line) - 2);
	CHECK(n > 0);
	line[n + 1] = 0;
	/*
	 * A body that starts with a frame of its own at a block's end (a prefix followed
	 * by its CRC, which a sender never writes by chance but the fuzzer does) is
	 * delivered there, before the closing delimiter (AGENT_PROTOCOL.md, section 1):
	 * a reply to that prefix, then whatever the rest makes. Only the shape is checked.
	 */
	bool split = splits(line, n + 2, len);
	bool had = expect_id;

	if (split)
		expect_id = false;
	reply_count = 0;
	for (size_t i = 0; i < n + 2; i++)
		CHECK(agent_feed(a, line[i]) == AGENT_OK);
	CHECK(split ? reply_count >= 1 : reply_count == 1);
	expect_id = had;
	CHECK(irq_depth == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	verbose = getenv("FUZZ_DISPATCH_VERBOSE") != NULL;
	build_machine();
	page_index = calloc(RAM_SIZE >> 12, sizeof(*page_index));
	index_new_pages();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct agent agent;
	static struct agent_ops ops;
	static const uint8_t maxphy[4] = { 52, 40, 46, 0 };

	if (size < 1 || size > 8192)
		return 0;
	uint8_t config = data[0];

	restore_machine();
	cpu = base_cpu;
	if (config & 1) {
		cpu.cr4 |= (1ULL << 12);
		cpu.cr3 = ROOT5;
	}
	if (config & 2)
		cpu.efer &= ~(1ULL << 11);
	cpu.maxphyaddr = maxphy[(config >> 2) & 3];
	ops = (struct agent_ops){
		.rx = host_rx,
		.tx = fuzz_tx,
		.read_phys = fuzz_read_phys,
		.read_cpu = (config & 0x20) ? NULL : host_read_cpu,
		.console_input = fuzz_console,
		.irq_save = fuzz_irq_save,
		.irq_restore = fuzz_irq_restore,
		.write_phys = (config & 0x10) ? NULL : fuzz_write_phys,
		.alloc_table = (config & 0x10) ? NULL : fuzz_alloc_table,
		.flush_tlb = fuzz_flush_tlb,
		.phys_to_virt = fuzz_phys_to_virt,
		.code_start = CODE,
		.code_end = CODE + 0x5000,
		.rebase_stack = fuzz_rebase_stack,
		.load_descriptors = fuzz_load_descriptors,
		.write_cr3 = fuzz_write_cr3,
		.efi = (config & 0x40) ? fake_uefi_reset() : NULL,
		.efi_call = agent_x86_efi_call,
	};
	CHECK(agent_init(&agent, &ops, NULL) == AGENT_OK);
	agent.have_caller = true;
	agent.caller_rip = CODE + 0x80;
	agent.caller_rsp = cpu.rsp + 0x30;
	agent.caller_rbp = cpu.rbp;
	agent_frame_decoder_init(&replies, replies_buf, AGENT_MAX_FRAME, on_reply, on_reply_text,
				 NULL);
	irq_depth = 0;

	data++, size--;
	if (config & 0x80) {
		expect_id = false; /* raw bytes: replies are checked for their shape only */
		for (size_t i = 0; i < size; i++)
			agent_feed(&agent, data[i]);
		return 0;
	}
	size_t start = 0;

	for (size_t i = 0; i <= size; i++)
		if (i == size || (data[i] == SEPARATOR && i + 1 < size && data[i + 1] == SEPARATOR)) {
			send_request(&agent, data + start, i - start);
			start = i + 2;
			i++;
		}
	return 0;
}
