/*
 * The agent's request handling: parse a request frame, run the method, send
 * one reply frame. Methods and message shapes: protocols/AGENT_PROTOCOL.md.
 */
#include "agent.h"
#include "agent_msgpack.h"

#define PAGE_SIZE_4K 0x1000ULL
#define ENTRIES 512

#define PTE_P (1ULL << 0)
#define PTE_RW (1ULL << 1)
#define PTE_US (1ULL << 2)
#define PTE_PWT (1ULL << 3)
#define PTE_PCD (1ULL << 4)
#define PTE_PS (1ULL << 7)
#define PTE_G (1ULL << 8)
#define PTE_PAT_4K (1ULL << 7)
#define PTE_PAT_LARGE (1ULL << 12)
#define PTE_NX (1ULL << 63)
#define ADDRESS_BITS 0x000ffffffffff000ULL

#define CR0_PG (1ULL << 31)
#define CR4_LA57 (1ULL << 12)
#define EFER_LMA (1ULL << 10)
#define EFER_NXE (1ULL << 11)

/* Range flags on the wire (AGENT_PROTOCOL.md, "walk"). */
#define RANGE_W (1u << 0)
#define RANGE_U (1u << 1)
#define RANGE_X (1u << 2)
#define RANGE_G (1u << 3)
#define RANGE_PWT (1u << 4)
#define RANGE_PCD (1u << 5)
#define RANGE_PAT (1u << 6)

/* The largest msgpack encoding of one walk range [start, size, phys, page_size, flags]. */
#define RANGE_MAX_BYTES 34

/* What a failed method reports beyond its status. */
struct failure {
	const char *message;
	uint64_t address;
	bool has_address;
};

static int fail(struct failure *f, int status, const char *message)
{
	f->message = message;
	f->has_address = false;
	return status;
}

static int fault(struct failure *f, uint64_t address, const char *message)
{
	f->message = message;
	f->address = address;
	f->has_address = true;
	return AGENT_E_FAULT;
}

const char *agent_strerror(int status)
{
	switch (status) {
	case AGENT_OK: return "ok";
	case AGENT_E_MALFORMED: return "malformed request";
	case AGENT_E_METHOD: return "unknown method";
	case AGENT_E_PARAMS: return "bad parameters";
	case AGENT_E_FAULT: return "address not readable";
	case AGENT_E_TOO_BIG: return "reply too big for a frame";
	case AGENT_E_UNSUPPORTED: return "not supported by this host";
	case AGENT_E_INTERNAL: return "internal error";
	case AGENT_E_ARG: return "bad argument";
	default: return "unknown status";
	}
}

int agent_last_error(const struct agent *agent)
{
	return agent ? agent->last_error : AGENT_E_ARG;
}

/* -- parameters -------------------------------------------------------------- */

struct params {
	struct mp_reader *r;
	uint32_t count;
	uint32_t taken;
};

/* The next parameter as an unsigned integer; absent (optional) leaves *v. */
static int param_uint(struct params *p, uint64_t *v, bool optional, struct failure *f)
{
	struct mp_item item;

	if (p->taken == p->count)
		return optional ? AGENT_OK : fail(f, AGENT_E_PARAMS, "missing parameter");
	p->taken++;
	if (!mp_read(p->r, &item))
		return fail(f, AGENT_E_MALFORMED, "truncated parameter");
	if (item.type != MP_UINT)
		return fail(f, AGENT_E_PARAMS, "parameter must be an unsigned integer");
	*v = item.v.u;
	return AGENT_OK;
}

static int params_done(struct params *p, struct failure *f)
{
	return p->taken == p->count ? AGENT_OK : fail(f, AGENT_E_PARAMS, "too many parameters");
}

/* -- paging ---------------------------------------------------------------- */

struct paging {
	int levels; /* 4 or 5 */
	bool nxe;
	uint64_t root;
	uint64_t address_mask; /* bits 12..MAXPHYADDR-1 */
	uint64_t reserved_high; /* bits MAXPHYADDR..51 (and NX without EFER.NXE) */
};

static int level_shift(int level)
{
	return 12 + 9 * (level - 1);
}

static int paging_setup(struct agent *a, struct paging *pg, struct failure *f)
{
	struct agent_cpu cpu = { 0 };
	int status;

	if (!a->ops->read_cpu)
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no CPU state (read_cpu)");
	status = a->ops->read_cpu(a->ctx, &cpu);
	if (status != AGENT_OK)
		return fail(f, status, "read_cpu failed");
	if (!(cpu.cr0 & CR0_PG) || !(cpu.efer & EFER_LMA))
		return fail(f, AGENT_E_UNSUPPORTED, "the CPU is not in long mode with paging");
	unsigned maxphy = cpu.maxphyaddr ? cpu.maxphyaddr : 52;

	if (maxphy > 52)
		maxphy = 52;
	pg->levels = (cpu.cr4 & CR4_LA57) ? 5 : 4;
	pg->nxe = (cpu.efer & EFER_NXE) != 0;
	pg->address_mask = (((1ULL << maxphy) - 1) & ~0xfffULL);
	pg->reserved_high = ADDRESS_BITS & ~((1ULL << maxphy) - 1);
	if (!pg->nxe)
		pg->reserved_high |= PTE_NX;
	pg->root = cpu.cr3 & pg->address_mask;
	return AGENT_OK;
}

static bool is_leaf(int level, uint64_t e)
{
	return level == 1 || (level <= 3 && (e & PTE_PS));
}

static uint64_t reserved_bits(const struct paging *pg, int level, uint64_t e)
{
	uint64_t mask = pg->reserved_high;

	if (level >= 4)
		mask |= PTE_PS;
	else if (level == 2 && (e & PTE_PS))
		mask |= 0x1fe000ULL; /* bits 20:13 */
	else if (level == 3 && (e & PTE_PS))
		mask |= 0x3fffe000ULL; /* bits 29:13 */
	return e & mask;
}

static uint64_t leaf_address(const struct paging *pg, int level, uint64_t e)
{
	return e & pg->address_mask & ~((1ULL << level_shift(level)) - 1);
}

static uint64_t canonical(const struct paging *pg, uint64_t va)
{
	int bits = pg->levels == 5 ? 57 : 48;
	uint64_t sign = 1ULL << (bits - 1);

	va &= (1ULL << bits) - 1;
	return (va & sign) ? va | ~((1ULL << bits) - 1) : va;
}

static bool is_canonical(const struct paging *pg, uint64_t va)
{
	return canonical(pg, va) == va;
}

static int read_entry(struct agent *a, uint64_t table, unsigned index, uint64_t *e)
{
	return a->ops->read_phys(a->ctx, table + 8ULL * index, e, sizeof(*e));
}

/* Effective leaf flags: permissions over the path, attributes of the leaf. */
static uint32_t leaf_flags(const struct paging *pg, int level, uint64_t e, bool w, bool u, bool nx)
{
	uint32_t flags = 0;

	if (w)
		flags |= RANGE_W;
	if (u)
		flags |= RANGE_U;
	if (!(nx || (pg->nxe && (e & PTE_NX))))
		flags |= RANGE_X;
	if (e & PTE_G)
		flags |= RANGE_G;
	if (e & PTE_PWT)
		flags |= RANGE_PWT;
	if (e & PTE_PCD)
		flags |= RANGE_PCD;
	if (e & (level == 1 ? PTE_PAT_4K : PTE_PAT_LARGE))
		flags |= RANGE_PAT;
	return flags;
}

struct translation {
	uint64_t pa;
	uint64_t page_size;
	uint32_t flags;
	int steps;
	uint64_t entries[5];
};

static int translate(struct agent *a, const struct paging *pg, uint64_t va, struct translation *t,
		     struct failure *f)
{
	uint64_t table = pg->root;
	bool w = true, u = true, nx = false;

	if (!is_canonical(pg, va))
		return fault(f, va, "non-canonical address");
	t->steps = 0;
	for (int level = pg->levels; level >= 1; level--) {
		unsigned index = (va >> level_shift(level)) & (ENTRIES - 1);
		uint64_t e;

		if (read_entry(a, table, index, &e) != AGENT_OK)
			return fault(f, va, "a page table is not readable");
		t->entries[t->steps++] = e;
		if (!(e & PTE_P))
			return fault(f, va, "not mapped (an entry on the walk is not present)");
		if (reserved_bits(pg, level, e))
			return fault(f, va, "reserved bits set in a page-table entry");
		w = w && (e & PTE_RW);
		u = u && (e & PTE_US);
		nx = nx || (pg->nxe && (e & PTE_NX));
		if (is_leaf(level, e)) {
			t->page_size = 1ULL << level_shift(level);
			t->pa = leaf_address(pg, level, e) | (va & (t->page_size - 1));
			t->flags = leaf_flags(pg, level, e, w, u, nx);
			return AGENT_OK;
		}
		table = e & pg->address_mask;
	}
	return fail(f, AGENT_E_INTERNAL, "walk ran past level 1");
}

/* -- the page-table walk with coalescing ---------------------------------------- */

struct walk {
	struct agent *a;
	const struct paging *pg;
	struct mp_writer *w;
	uint64_t start;
	uint32_t max_ranges, emitted;
	uint64_t leaves, problems;
	bool full;
	uint64_t next;
	bool have;
	uint64_t r_start, r_size, r_phys, r_page;
	uint32_t r_flags;
};

static void walk_emit(struct walk *wk)
{
	if (wk->emitted == wk->max_ranges) {
		wk->full = true;
		wk->next = wk->r_start;
		return;
	}
	mp_write_array(wk->w, 5);
	mp_write_uint(wk->w, wk->r_start);
	mp_write_uint(wk->w, wk->r_size);
	mp_write_uint(wk->w, wk->r_phys);
	mp_write_uint(wk->w, wk->r_page);
	mp_write_uint(wk->w, wk->r_flags);
	wk->emitted++;
}

static void walk_leaf(struct walk *wk, uint64_t va, uint64_t pa, uint64_t size, uint32_t flags)
{
	wk->leaves++;
	if (wk->have && va == wk->r_start + wk->r_size && size == wk->r_page &&
	    flags == wk->r_flags && pa == wk->r_phys + wk->r_size) {
		wk->r_size += size;
		return;
	}
	if (wk->have) {
		walk_emit(wk);
		if (wk->full)
			return;
	}
	wk->have = true;
	wk->r_start = va;
	wk->r_size = size;
	wk->r_phys = pa;
	wk->r_page = size;
	wk->r_flags = flags;
}

/* Depth is bounded by the paging levels; a table per level on the stack frame. */
static void walk_table(struct walk *wk, int level, uint64_t table, uint64_t base, bool w, bool u,
		       bool nx)
{
	const struct paging *pg = wk->pg;
	int shift = level_shift(level);
	uint64_t span = 1ULL << shift;

	for (unsigned i = 0; i < ENTRIES && !wk->full; i++) {
		uint64_t va = canonical(pg, base | ((uint64_t)i << shift));
		uint64_t e;

		if (va + (span - 1) < wk->start)
			continue; /* wholly before where this request starts */
		if (read_entry(wk->a, table, i, &e) != AGENT_OK) {
			wk->problems++;
			return; /* the table is unreadable */
		}
		if (!(e & PTE_P))
			continue;
		if (reserved_bits(pg, level, e)) {
			wk->problems++;
			continue;
		}
		bool lw = w && (e & PTE_RW);
		bool lu = u && (e & PTE_US);
		bool lnx = nx || (pg->nxe && (e & PTE_NX));

		if (is_leaf(level, e)) {
			if (va >= wk->start)
				walk_leaf(wk, va, leaf_address(pg, level, e), span,
					  leaf_flags(pg, level, e, lw, lu, lnx));
			continue;
		}
		walk_table(wk, level - 1, e & pg->address_mask, va, lw, lu, lnx);
	}
}

/* -- methods ------------------------------------------------------------------- */

typedef int (*method_fn)(struct agent *a, struct params *p, struct mp_writer *w,
			 struct failure *f);

static const char *const method_names[];

static int m_hello(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	struct paging pg;
	int status = params_done(p, f);
	struct failure ignored;

	if (status != AGENT_OK)
		return status;
	int levels = paging_setup(a, &pg, &ignored) == AGENT_OK ? pg.levels : 0;
	unsigned n = 0;

	while (method_names[n])
		n++;
	/* A new session: forget the replies kept for the previous one's retries. */
	for (unsigned i = 0; i < AGENT_REPLAY_SLOTS; i++)
		a->replay[i].used = false;
	mp_write_map(w, 10);
	mp_write_cstr(w, "protocol");
	mp_write_uint(w, AGENT_PROTOCOL_VERSION);
	mp_write_cstr(w, "agent");
	mp_write_cstr(w, AGENT_VERSION);
	mp_write_cstr(w, "methods");
	mp_write_array(w, n);
	for (unsigned i = 0; i < n; i++)
		mp_write_cstr(w, method_names[i]);
	mp_write_cstr(w, "max_frame");
	mp_write_uint(w, AGENT_MAX_FRAME);
	mp_write_cstr(w, "max_request");
	mp_write_uint(w, AGENT_MAX_REQUEST);
	mp_write_cstr(w, "max_read");
	mp_write_uint(w, AGENT_MAX_READ);
	mp_write_cstr(w, "page_size");
	mp_write_uint(w, PAGE_SIZE_4K);
	mp_write_cstr(w, "paging_levels");
	mp_write_uint(w, (uint64_t)levels);
	mp_write_cstr(w, "replay_slots");
	mp_write_uint(w, AGENT_REPLAY_SLOTS);
	mp_write_cstr(w, "stopped");
	mp_write_bool(w, a->stopped);
	return AGENT_OK;
}

static void kv(struct mp_writer *w, const char *key, uint64_t value)
{
	mp_write_cstr(w, key);
	mp_write_uint(w, value);
}

static int m_regs(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	struct agent_cpu cpu = { 0 };
	int status = params_done(p, f);

	if (status != AGENT_OK)
		return status;
	if (!a->ops->read_cpu)
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no CPU state (read_cpu)");
	status = a->ops->read_cpu(a->ctx, &cpu);
	if (status != AGENT_OK)
		return fail(f, status, "read_cpu failed");
	mp_write_map(w, 24);
	kv(w, "cr0", cpu.cr0);
	kv(w, "cr2", cpu.cr2);
	kv(w, "cr3", cpu.cr3);
	kv(w, "cr4", cpu.cr4);
	kv(w, "cr8", cpu.cr8);
	kv(w, "efer", cpu.efer);
	kv(w, "pat", cpu.pat);
	if (a->stopped && a->have_caller) {
		cpu.rip = a->caller_rip;
		cpu.rsp = a->caller_rsp;
		cpu.rbp = a->caller_rbp;
	}
	kv(w, "rip", cpu.rip);
	kv(w, "rsp", cpu.rsp);
	kv(w, "rbp", cpu.rbp);
	kv(w, "rflags", a->irq_saved ? a->irq_state : cpu.rflags);
	kv(w, "gdtr_base", cpu.gdtr_base);
	kv(w, "gdtr_limit", cpu.gdtr_limit);
	kv(w, "idtr_base", cpu.idtr_base);
	kv(w, "idtr_limit", cpu.idtr_limit);
	kv(w, "cs", cpu.cs);
	kv(w, "ss", cpu.ss);
	kv(w, "ds", cpu.ds);
	kv(w, "es", cpu.es);
	kv(w, "fs", cpu.fs);
	kv(w, "gs", cpu.gs);
	kv(w, "tr", cpu.tr);
	kv(w, "ldtr", cpu.ldtr);
	kv(w, "maxphyaddr", cpu.maxphyaddr ? cpu.maxphyaddr : 52);
	return AGENT_OK;
}

static int read_args(struct params *p, uint64_t *address, uint64_t *len, struct failure *f)
{
	int status = param_uint(p, address, false, f);

	if (status == AGENT_OK)
		status = param_uint(p, len, false, f);
	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status == AGENT_OK && *len > AGENT_MAX_READ)
		status = fail(f, AGENT_E_PARAMS, "read longer than max_read");
	return status;
}

static int m_read_phys(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t pa, len;
	int status = read_args(p, &pa, &len, f);

	if (status != AGENT_OK)
		return status;
	if (pa + len < pa)
		return fault(f, pa, "range wraps around");
	uint8_t *out = mp_write_bin_reserve(w, len);

	if (!out)
		return fail(f, AGENT_E_TOO_BIG, "read does not fit a reply");
	if (len && a->ops->read_phys(a->ctx, pa, out, len) != AGENT_OK)
		return fault(f, pa, "physical range not readable (not RAM the host maps)");
	return AGENT_OK;
}

static int m_read_virt(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t va, len;
	struct paging pg;
	int status = read_args(p, &va, &len, f);

	if (status == AGENT_OK)
		status = paging_setup(a, &pg, f);
	if (status != AGENT_OK)
		return status;
	uint8_t *out = mp_write_bin_reserve(w, len);

	if (!out)
		return fail(f, AGENT_E_TOO_BIG, "read does not fit a reply");
	/* Every page is translated by walking the tables first: never a #PF. */
	for (uint64_t done = 0; done < len;) {
		struct translation t;
		uint64_t at = va + done;

		status = translate(a, &pg, at, &t, f);
		if (status != AGENT_OK)
			return status;
		uint64_t chunk = t.page_size - (at & (t.page_size - 1));

		if (chunk > len - done)
			chunk = len - done;
		if (a->ops->read_phys(a->ctx, t.pa, out + done, chunk) != AGENT_OK)
			return fault(f, at, "mapped to physical memory the host cannot read (MMIO?)");
		done += chunk;
	}
	return AGENT_OK;
}

static int m_translate(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t va = 0;
	struct paging pg;
	struct translation t;
	int status = param_uint(p, &va, false, f);

	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status == AGENT_OK)
		status = paging_setup(a, &pg, f);
	if (status == AGENT_OK)
		status = translate(a, &pg, va, &t, f);
	if (status != AGENT_OK)
		return status;
	mp_write_array(w, 4);
	mp_write_uint(w, t.pa);
	mp_write_uint(w, t.page_size);
	mp_write_uint(w, t.flags);
	mp_write_array(w, (uint32_t)t.steps);
	for (int i = 0; i < t.steps; i++)
		mp_write_uint(w, t.entries[i]);
	return AGENT_OK;
}

static int m_walk(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t start = 0, max = (w->cap - 64) / RANGE_MAX_BYTES;
	struct paging pg;
	int status = param_uint(p, &start, true, f);

	if (status == AGENT_OK)
		status = param_uint(p, &max, true, f);
	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status == AGENT_OK)
		status = paging_setup(a, &pg, f);
	if (status != AGENT_OK)
		return status;
	if (max == 0 || max > (w->cap - 64) / RANGE_MAX_BYTES)
		return fail(f, AGENT_E_PARAMS, "max_ranges out of bounds");

	struct walk wk = { .a = a, .pg = &pg, .w = w, .start = start, .max_ranges = (uint32_t)max };

	mp_write_array(w, 5);
	/* The range count is patched in at the end: array 32 with a placeholder. */
	size_t count_at = w->len;

	if (w->overflow || w->cap - w->len < 5)
		return fail(f, AGENT_E_TOO_BIG, "no room for the walk");
	w->buf[w->len] = 0xdd;
	w->len += 5;
	walk_table(&wk, pg.levels, pg.root, 0, true, true, false);
	if (wk.have && !wk.full)
		walk_emit(&wk);
	if (w->overflow)
		return fail(f, AGENT_E_INTERNAL, "walk ranges overflowed the reply");
	w->buf[count_at + 1] = (uint8_t)(wk.emitted >> 24);
	w->buf[count_at + 2] = (uint8_t)(wk.emitted >> 16);
	w->buf[count_at + 3] = (uint8_t)(wk.emitted >> 8);
	w->buf[count_at + 4] = (uint8_t)wk.emitted;
	if (wk.full)
		mp_write_uint(w, wk.next);
	else
		mp_write_nil(w);
	mp_write_uint(w, wk.leaves);
	mp_write_uint(w, wk.problems);
	mp_write_uint(w, pg.root);
	return AGENT_OK;
}

static int m_stop(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	int status = params_done(p, f);

	if (status != AGENT_OK)
		return status;
	if (!a->stopped) {
		a->stopped = true;
		a->stops++;
	}
	mp_write_uint(w, a->stops);
	return AGENT_OK;
}

static int m_resume(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	int status = params_done(p, f);

	if (status != AGENT_OK)
		return status;
	a->stopped = false;
	mp_write_uint(w, a->stops);
	return AGENT_OK;
}

struct method {
	const char *name;
	method_fn fn;
	bool mutating; /* replies kept so that a retry is answered, not re-run */
};

static const struct method methods[] = {
	{ "hello", m_hello, false },
	{ "regs", m_regs, false },
	{ "read_phys", m_read_phys, false },
	{ "read_virt", m_read_virt, false },
	{ "translate", m_translate, false },
	{ "walk", m_walk, false },
	{ "stop", m_stop, true },
	{ "resume", m_resume, true },
};

static const char *const method_names[] = {
	"hello", "regs", "read_phys", "read_virt", "translate", "walk", "stop", "resume", NULL,
};

_Static_assert(sizeof(methods) / sizeof(methods[0]) + 1 ==
		       sizeof(method_names) / sizeof(method_names[0]),
	       "method_names lists every method");

static bool str_eq(const uint8_t *s, uint32_t len, const char *c)
{
	uint32_t i = 0;

	for (; i < len; i++)
		if (c[i] != (char)s[i] || c[i] == 0)
			return false;
	return c[i] == 0;
}

/* -- dispatch ------------------------------------------------------------------- */

static void send_body(struct agent *a, size_t len)
{
	agent_frame_write(a->tx_buf, len, a->ops->tx, a->ctx);
}

static void reply_error(struct agent *a, struct mp_writer *w, uint32_t id, int status,
			const struct failure *f)
{
	mp_writer_init(w, a->tx_buf, sizeof(a->tx_buf) - 4);
	mp_write_array(w, 4);
	mp_write_uint(w, 1);
	mp_write_uint(w, id);
	mp_write_array(w, f->has_address ? 3 : 2);
	mp_write_uint(w, (uint64_t)status);
	mp_write_cstr(w, f->message ? f->message : agent_strerror(status));
	if (f->has_address)
		mp_write_uint(w, f->address);
	mp_write_nil(w);
	a->errors++;
	a->last_error = status;
}

static struct agent_replay *replay_find(struct agent *a, uint32_t id)
{
	for (unsigned i = 0; i < AGENT_REPLAY_SLOTS; i++)
		if (a->replay[i].used && a->replay[i].id == id)
			return &a->replay[i];
	return NULL;
}

static void replay_store(struct agent *a, uint32_t id, size_t len)
{
	struct agent_replay *slot = &a->replay[a->replay_next];

	if (len > AGENT_REPLAY_MAX)
		return;
	a->replay_next = (a->replay_next + 1) % AGENT_REPLAY_SLOTS;
	slot->id = id;
	slot->used = true;
	slot->len = (uint16_t)len;
	for (size_t i = 0; i < len; i++)
		slot->reply[i] = a->tx_buf[i];
}

static void handle_frame(void *ctx, const uint8_t *body, size_t len)
{
	struct agent *a = ctx;
	struct mp_reader r;
	struct mp_writer w;
	struct mp_item item;
	struct failure f = { 0 };
	uint32_t id = 0;
	int status = AGENT_E_MALFORMED;
	const struct method *m = NULL;

	a->requests++;
	mp_reader_init(&r, body, len);
	f.message = "not a [0, id, method, params] request";
	if (!mp_read(&r, &item) || item.type != MP_ARRAY || item.v.n != 4)
		goto error;
	if (!mp_read(&r, &item) || item.type != MP_UINT || item.v.u != 0)
		goto error;
	if (!mp_read(&r, &item) || item.type != MP_UINT || item.v.u > 0xffffffffULL)
		goto error;
	id = (uint32_t)item.v.u;
	if (!mp_read(&r, &item) || item.type != MP_STR)
		goto error;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (str_eq(item.v.bytes.data, item.v.bytes.len, methods[i].name))
			m = &methods[i];
	struct mp_item params_head;

	if (!mp_read(&r, &params_head) || params_head.type != MP_ARRAY)
		goto error;
	if (!m) {
		status = fail(&f, AGENT_E_METHOD, "unknown method");
		goto error;
	}
	if (m->mutating) {
		struct agent_replay *kept = replay_find(a, id);

		if (kept) {
			for (size_t i = 0; i < kept->len; i++)
				a->tx_buf[i] = kept->reply[i];
			send_body(a, kept->len);
			return;
		}
	}

	struct params p = { &r, params_head.v.n, 0 };

	mp_writer_init(&w, a->tx_buf, sizeof(a->tx_buf) - 4);
	mp_write_array(&w, 4);
	mp_write_uint(&w, 1);
	mp_write_uint(&w, id);
	mp_write_nil(&w);
	status = m->fn(a, &p, &w, &f);
	if (status == AGENT_OK && w.overflow)
		status = fail(&f, AGENT_E_TOO_BIG, "reply too big for a frame");
	if (status != AGENT_OK)
		goto error;
	if (m->mutating)
		replay_store(a, id, w.len);
	send_body(a, w.len);
	return;
error:
	reply_error(a, &w, id, status, &f);
	if (m && m->mutating)
		replay_store(a, id, w.len);
	send_body(a, w.len);
}

static void console_byte(void *ctx, uint8_t byte)
{
	struct agent *a = ctx;

	if (a->ops->console_input)
		a->ops->console_input(a->ctx, byte);
}

int agent_init(struct agent *agent, const struct agent_ops *ops, void *ctx)
{
	if (!agent)
		return AGENT_E_ARG;
	if (!ops || !ops->rx || !ops->tx || !ops->read_phys) {
		agent->last_error = AGENT_E_ARG;
		return AGENT_E_ARG;
	}
	agent->ops = ops;
	agent->ctx = ctx;
	agent->last_error = AGENT_OK;
	agent->stopped = false;
	agent->irq_saved = false;
	agent->have_caller = false;
	agent->stops = agent->requests = agent->errors = 0;
	agent->replay_next = 0;
	for (unsigned i = 0; i < AGENT_REPLAY_SLOTS; i++)
		agent->replay[i].used = false;
	agent_frame_decoder_init(&agent->decoder, agent->rx_buf, AGENT_MAX_REQUEST, handle_frame,
				 console_byte, agent);
	return AGENT_OK;
}

int agent_feed(struct agent *agent, uint8_t byte)
{
	if (!agent || !agent->ops)
		return AGENT_E_ARG;
	agent_frame_decoder_feed(&agent->decoder, byte);
	return AGENT_OK;
}

int agent_poll(struct agent *agent)
{
	if (!agent || !agent->ops)
		return AGENT_E_ARG;
#if defined(__x86_64__)
	/*
	 * The caller's state as it will be after this call returns: RIP the
	 * return address, RSP above it, RBP the one our prologue saved. The
	 * stack above this frame does not change while stopped, so an unwinder
	 * walks the kernel from there (requests run in frames below it).
	 */
	uint64_t *frame = __builtin_frame_address(0);

	agent->caller_rbp = frame[0];
	agent->caller_rip = (uint64_t)__builtin_return_address(0);
	agent->caller_rsp = (uint64_t)(frame + 2);
	agent->have_caller = true;
#endif
	for (;;) {
		if (agent->stopped && !agent->irq_saved && agent->ops->irq_save) {
			agent->irq_state = agent->ops->irq_save(agent->ctx);
			agent->irq_saved = true;
		} else if (!agent->stopped && agent->irq_saved) {
			agent->irq_saved = false;
			agent->ops->irq_restore(agent->ctx, agent->irq_state);
		}
		int c = agent->ops->rx(agent->ctx);

		if (c < 0) {
			if (!agent->stopped)
				break;
			if (agent->ops->relax)
				agent->ops->relax(agent->ctx);
			continue;
		}
		agent_frame_decoder_feed(&agent->decoder, (uint8_t)c);
	}
	return AGENT_OK;
}
