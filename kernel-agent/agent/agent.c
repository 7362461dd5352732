/*
 * The agent's request handling: parse a request frame, run the method, send
 * one reply frame. Methods and message shapes: protocols/AGENT_PROTOCOL.md.
 */
#include "agent.h"
#include "agent_internal.h"
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
_Static_assert(RANGE_W == AGENT_RANGE_W && RANGE_X == AGENT_RANGE_X,
	       "agent_internal.h names the same range flags");

/* The largest msgpack encoding of one walk range [start, size, phys, page_size, flags]. */
#define RANGE_MAX_BYTES 34

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
	case AGENT_E_REFUSED: return "refused for safety";
	case AGENT_E_EFI: return "the firmware returned an error";
	default: return "unknown status";
	}
}

int agent_last_error(const struct agent *agent)
{
	return agent ? agent->last_error : AGENT_E_ARG;
}

/* -- parameters -------------------------------------------------------------- */

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

/* -- shared with agent_efi.c (agent_internal.h) -------------------------------- */

int agent_fail(struct failure *f, int status, const char *message)
{
	return fail(f, status, message);
}

int agent_fail_at(struct failure *f, int status, uint64_t address, const char *message)
{
	f->message = message;
	f->address = address;
	f->has_address = true;
	return status;
}

int agent_param_uint(struct params *p, uint64_t *v, bool optional, struct failure *f)
{
	return param_uint(p, v, optional, f);
}

int agent_params_done(struct params *p, struct failure *f)
{
	return params_done(p, f);
}

int agent_paging_setup(struct agent *a, struct paging *pg, struct failure *f)
{
	return paging_setup(a, pg, f);
}

int agent_translate(struct agent *a, const struct paging *pg, uint64_t va, struct translation *t,
		    struct failure *f)
{
	return translate(a, pg, va, t, f);
}

bool agent_is_canonical(const struct paging *pg, uint64_t va)
{
	return is_canonical(pg, va);
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

static unsigned cpus_online(const struct agent *a)
{
	unsigned n = a->ops->cpus_online ? a->ops->cpus_online(a->ctx) : 1;

	return n ? n : 1;
}

/* "hooks": the optional hooks the host gave, by their names in struct agent_ops. */
static void write_hooks(const struct agent *a, struct mp_writer *w)
{
	const struct agent_ops *o = a->ops;
	const struct {
		const char *name;
		bool present;
	} hooks[] = {
		{ "read_cpu", o->read_cpu != NULL },
		{ "console_input", o->console_input != NULL },
		{ "irq_save", o->irq_save && o->irq_restore },
		{ "relax", o->relax != NULL },
		{ "write_phys", o->write_phys != NULL },
		{ "alloc_table", o->alloc_table != NULL },
		{ "flush_tlb", o->flush_tlb != NULL },
		{ "phys_to_virt", o->phys_to_virt != NULL },
		{ "rebase_stack", o->rebase_stack != NULL },
		{ "load_descriptors", o->load_descriptors != NULL },
		{ "write_cr3", o->write_cr3 != NULL },
		{ "efi_call", o->efi && o->efi_call },
		{ "cpus_online", o->cpus_online != NULL },
		{ "hold_others", o->hold_others && o->release_others },
		{ "tlb_shootdown", o->tlb_shootdown != NULL },
	};
	unsigned n = 0;

	for (unsigned i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
		n += hooks[i].present;
	mp_write_cstr(w, "hooks");
	mp_write_array(w, n);
	for (unsigned i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
		if (hooks[i].present)
			mp_write_cstr(w, hooks[i].name);
}

static int m_hello(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	struct paging pg;
	uint64_t link = 1;
	int status = param_uint(p, &link, true, f);
	struct failure ignored;

	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status != AGENT_OK)
		return status;
	/* The host's link version: 2 (or more) for NAKs and chunks, none or 1 for whole replies. */
	a->link = link >= AGENT_LINK_VERSION ? AGENT_LINK_VERSION : 1;
	int levels = paging_setup(a, &pg, &ignored) == AGENT_OK ? pg.levels : 0;
	unsigned n = 0;

	while (method_names[n])
		n++;
	/* A new session: forget the replies kept for the previous one's retries. */
	for (unsigned i = 0; i < AGENT_REPLAY_SLOTS; i++)
		a->replay[i].used = false;
	mp_write_map(w, 16);
	mp_write_cstr(w, "protocol");
	mp_write_uint(w, AGENT_PROTOCOL_VERSION);
	mp_write_cstr(w, "link");
	mp_write_uint(w, AGENT_LINK_VERSION);
	mp_write_cstr(w, "chunk_max");
	mp_write_uint(w, AGENT_CHUNK_MAX);
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
	mp_write_cstr(w, "cpus");
	mp_write_uint(w, cpus_online(a));
	mp_write_cstr(w, "boot_nonce");
	if (a->ops->boot_nonce)
		mp_write_uint(w, a->ops->boot_nonce);
	else
		mp_write_nil(w);
	mp_write_cstr(w, "readonly");
#ifdef AGENT_READONLY
	mp_write_bool(w, true);
#else
	mp_write_bool(w, false);
#endif
	write_hooks(a, w);
	return AGENT_OK;
}

static void kv(struct mp_writer *w, const char *key, uint64_t value)
{
	mp_write_cstr(w, key);
	mp_write_uint(w, value);
}

/* The link's and the methods' counters since the agent started (make soak checks them). */
static int m_link_stats(struct agent *a, struct params *p, struct mp_writer *w,
			struct failure *f)
{
	int status = params_done(p, f);

	if (status != AGENT_OK)
		return status;
	mp_write_map(w, 8);
	kv(w, "requests", a->requests);
	kv(w, "replayed", a->replayed);
	kv(w, "naks_sent", a->naks_sent);
	kv(w, "naks_received", a->naks_received);
	kv(w, "chunks_sent", a->chunks_sent);
	kv(w, "dropped", a->decoder.dropped);
	kv(w, "stops", a->stops);
	kv(w, "remaps", a->remaps);
	return AGENT_OK;
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

/*
 * AGENT_READONLY: a build for kernels where inspection must stay read-only.
 * Nothing that changes the kernel is compiled in: the remaps, move_stack,
 * load_descriptors, switch_cr3 and efi_set_virtual_address_map are unknown
 * methods (error 2), and hello says "readonly": true.
 */
#ifndef AGENT_READONLY
/* -- remaps ---------------------------------------------------------------------- */

#define PTE_FLAG_BITS (PTE_P | PTE_RW | PTE_US | PTE_PWT | PTE_PCD | PTE_G | PTE_NX)

enum { PROT_CODE = 1, PROT_STACK, PROT_DESCRIPTORS, PROT_TABLES, PROT_EFI };

/* Refusal messages start with the reason's name (AGENT_PROTOCOL.md, "Refusals"). */
static const char *const prot_message[] = {
	"",
	"running-code: the change would unmap, move or make non-executable the code the agent or the kernel runs",
	"own-stack: the change would unmap, move or make read-only the stack the agent runs on",
	"descriptor-tables: the change would unmap, move or make read-only the GDT, IDT, TSS or LDT in use",
	"page-tables: the change would unmap, move or make read-only the mapping through which the page tables are reached",
	"efi-runtime: the change would unmap or move a UEFI runtime region: after SetVirtualAddressMap the firmware reaches it only there, and cannot be told another address",
};

static int refuse(struct failure *f, uint64_t address, const char *message)
{
	f->message = message;
	f->address = address;
	f->has_address = true;
	return AGENT_E_REFUSED;
}

static int read_virt_u64(struct agent *a, const struct paging *pg, uint64_t va, uint64_t *v)
{
	struct translation t;
	struct failure ignored;

	if (translate(a, pg, va, &t, &ignored) != AGENT_OK)
		return AGENT_E_FAULT;
	if ((t.pa & 0xfff) > 0xff8)
		return AGENT_E_FAULT;
	return a->ops->read_phys(a->ctx, t.pa, v, sizeof(*v));
}

static void protect_add(struct agent *a, uint64_t lo, uint64_t hi, uint8_t kind)
{
	if (a->protected_count == AGENT_PROTECTED_MAX || hi <= lo)
		return;
	a->protected[a->protected_count].lo = lo & ~0xfffULL;
	a->protected[a->protected_count].hi = hi;
	a->protected[a->protected_count].kind = kind;
	a->protected_count++;
}

static void collect_tables(struct agent *a, const struct paging *pg, int level, uint64_t table)
{
	if (a->table_count < AGENT_TABLES_MAX)
		a->tables[a->table_count++] = table;
	if (level == 1)
		return;
	for (unsigned i = 0; i < ENTRIES; i++) {
		uint64_t e;

		if (read_entry(a, table, i, &e) != AGENT_OK)
			return;
		if ((e & PTE_P) && !is_leaf(level, e) && !reserved_bits(pg, level, e))
			collect_tables(a, pg, level - 1, e & pg->address_mask);
	}
}

/* Base and byte limit of the 16-byte system descriptor (TSS, LDT) a GDT selector names. */
static bool system_segment(struct agent *a, const struct paging *pg, const struct agent_cpu *cpu,
			   uint16_t selector, uint64_t *base, uint64_t *limit)
{
	uint64_t lo, hi;
	unsigned offset = selector & ~7u;

	if (!offset || (selector & 4) || offset + 15u > cpu->gdtr_limit ||
	    read_virt_u64(a, pg, cpu->gdtr_base + offset, &lo) != AGENT_OK ||
	    read_virt_u64(a, pg, cpu->gdtr_base + offset + 8, &hi) != AGENT_OK)
		return false;
	*base = ((lo >> 16) & 0xffffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffffffffULL) << 32);
	*limit = (lo & 0xffff) | ((lo >> 32) & 0xf0000);
	if (lo & (1ULL << 55)) /* G: 4 KiB units */
		*limit = (*limit << 12) | 0xfff;
	return true;
}

/* What must stay mapped as it is: the agent's code and stack, the descriptor tables, the tables. */
static int protection_setup(struct agent *a, struct paging *pg, struct agent_cpu *cpu,
			    struct failure *f)
{
	int status = paging_setup(a, pg, f);

	if (status != AGENT_OK)
		return status;
	*cpu = (struct agent_cpu){ 0 };
	status = a->ops->read_cpu(a->ctx, cpu);
	if (status != AGENT_OK)
		return fail(f, status, "read_cpu failed");
	a->protected_count = 0;
	a->table_count = 0;
	protect_add(a, cpu->rip, cpu->rip + 1, PROT_CODE);
	if (a->have_caller)
		protect_add(a, a->caller_rip, a->caller_rip + 1, PROT_CODE);
	if (a->ops->code_end > a->ops->code_start)
		protect_add(a, a->ops->code_start, a->ops->code_end, PROT_CODE);
	/* The stack: from RSP up the frame-pointer chain. */
	uint64_t hi = cpu->rsp + 8, rbp = cpu->rbp;

	for (int i = 0; i < 64; i++) {
		uint64_t saved;

		if (rbp < cpu->rsp || rbp - cpu->rsp > 0x100000)
			break;
		if (rbp + 16 > hi)
			hi = rbp + 16;
		if (read_virt_u64(a, pg, rbp, &saved) != AGENT_OK || saved <= rbp)
			break;
		rbp = saved;
	}
	protect_add(a, cpu->rsp, hi, PROT_STACK);
	protect_add(a, cpu->gdtr_base, cpu->gdtr_base + cpu->gdtr_limit + 1ULL, PROT_DESCRIPTORS);
	protect_add(a, cpu->idtr_base, cpu->idtr_base + cpu->idtr_limit + 1ULL, PROT_DESCRIPTORS);
	uint64_t base, limit;

	if (system_segment(a, pg, cpu, cpu->tr, &base, &limit))
		protect_add(a, base, base + 0x68, PROT_DESCRIPTORS);
	if (system_segment(a, pg, cpu, cpu->ldtr, &base, &limit))
		protect_add(a, base, base + limit + 1, PROT_DESCRIPTORS);
	/* After SetVirtualAddressMap: the runtime regions at the addresses the firmware was given. */
	uint64_t efi_va, efi_size;

	for (unsigned k = 0; agent_efi_virtual_range(a, k, &efi_va, &efi_size); k++)
		protect_add(a, efi_va, efi_va + efi_size, PROT_EFI);
	collect_tables(a, pg, pg->levels, pg->root);
	if (a->ops->phys_to_virt)
		for (unsigned i = 0; i < a->table_count; i++) {
			uint64_t v = a->ops->phys_to_virt(a->ctx, a->tables[i]);

			protect_add(a, v, v + PAGE_SIZE_4K, PROT_TABLES);
		}
	return AGENT_OK;
}

enum reach { REACH_OK, REACH_ABSENT, REACH_LARGE, REACH_UNREADABLE };

/* The entry that maps va at `level`, or where the walk there stops. */
static enum reach reach_entry(struct agent *a, const struct paging *pg, uint64_t va, int level,
			      uint64_t *entry_pa, uint64_t *entry, int *at_level)
{
	uint64_t table = pg->root;

	for (int l = pg->levels;; l--) {
		uint64_t pa = table + 8ULL * ((va >> level_shift(l)) & (ENTRIES - 1));
		uint64_t e;

		if (a->ops->read_phys(a->ctx, pa, &e, sizeof(e)) != AGENT_OK)
			return REACH_UNREADABLE;
		*entry_pa = pa;
		*entry = e;
		*at_level = l;
		if (l == level)
			return REACH_OK;
		if (!(e & PTE_P))
			return REACH_ABSENT;
		if (is_leaf(l, e))
			return REACH_LARGE;
		table = e & pg->address_mask;
	}
}

/* Refuses an edit that takes away what a protected range needs (unless force). */
static int check_edit(struct agent *a, const struct paging *pg, const struct agent_edit *e,
		      struct failure *f)
{
	uint64_t lo = e->va, last = e->va + ((1ULL << level_shift(e->level)) - 1);

	if (!(e->old & PTE_P))
		return AGENT_OK; /* nothing was reached through it */
	bool old_leaf = is_leaf(e->level, e->old), new_leaf = is_leaf(e->level, e->new);

	for (unsigned i = 0; i < a->protected_count; i++) {
		const struct agent_protected *p = &a->protected[i];
		bool bad;

		if (p->hi - 1 < lo || p->lo > last)
			continue;
		if (!(e->new & PTE_P) || old_leaf != new_leaf ||
		    ((e->old ^ e->new) & pg->address_mask))
			bad = true;
		else if (p->kind == PROT_EFI)
			bad = false; /* its permissions are the kernel's to choose */
		else if (p->kind == PROT_CODE)
			bad = pg->nxe && (e->new & PTE_NX) && !(e->old & PTE_NX);
		else
			bad = !(e->new & PTE_RW) && (e->old & PTE_RW);
		if (bad)
			return refuse(f, p->lo > lo ? p->lo : lo, prot_message[p->kind]);
	}
	return AGENT_OK;
}

static int page_level(uint64_t page_size, int *level, struct failure *f)
{
	if (page_size == PAGE_SIZE_4K)
		*level = 1;
	else if (page_size == (1ULL << 21))
		*level = 2;
	else if (page_size == (1ULL << 30))
		*level = 3;
	else if (page_size == (1ULL << 39))
		*level = 4; /* unmap and set_entries only: a whole PML4 entry */
	else
		return fail(f, AGENT_E_PARAMS, "page_size must be 4 KiB, 2 MiB, 1 GiB or 512 GiB");
	return AGENT_OK;
}

/*
 * A page-table change with other CPUs online and no way to flush their TLBs
 * (force applies it all the same: the other CPUs keep what their TLBs hold).
 */
static int refuse_without_shootdown(struct agent *a, bool force, struct failure *f)
{
	unsigned n = cpus_online(a);

	if (n <= 1 || a->ops->tlb_shootdown || force)
		return AGENT_OK;
	f->message = "no-shootdown: other CPUs are online and the host gives no tlb_shootdown "
		     "hook: they would keep stale translations";
	f->has_address = false;
	return AGENT_E_REFUSED;
}

static bool remap_supported(struct agent *a)
{
	return a->ops->write_phys && a->ops->alloc_table && a->ops->read_cpu;
}

static int param_force(struct params *p, bool *force, struct failure *f)
{
	struct mp_item item;

	*force = false;
	if (p->taken == p->count)
		return AGENT_OK;
	p->taken++;
	if (!mp_read(p->r, &item))
		return fail(f, AGENT_E_MALFORMED, "truncated parameter");
	if (item.type != MP_BOOL)
		return fail(f, AGENT_E_PARAMS, "force must be a bool");
	*force = item.v.b;
	return AGENT_OK;
}

/* Appends one written entry to the reply list (and the TLB work). */
static int record_edit(struct agent *a, uint64_t va, int level, uint64_t entry_pa, uint64_t old,
		       uint64_t new, struct failure *f)
{
	struct agent_edit *e;

	if (a->edit_count == AGENT_EDIT_MAX)
		return fail(f, AGENT_E_INTERNAL, "more entries than AGENT_EDIT_MAX");
	e = &a->edits[a->edit_count++];
	e->va = va;
	e->level = (uint8_t)level;
	e->entry_pa = entry_pa;
	e->old = old;
	e->new = new;
	return AGENT_OK;
}

/*
 * Phase 2: writes the intents, creating the tables on the way (non-leaf
 * entries P RW US: the leaves decide), then flushes the TLB.
 */
static int apply_intents(struct agent *a, const struct paging *pg, struct failure *f)
{
	bool flush_all = false;
	int status;

	a->edit_count = 0;
	for (unsigned i = 0; i < a->intent_count; i++) {
		const struct agent_edit *in = &a->intents[i];
		uint64_t entry_pa, entry;
		int at;

		for (;;) {
			enum reach r = reach_entry(a, pg, in->va, in->level, &entry_pa, &entry, &at);

			if (r == REACH_OK)
				break;
			if (r != REACH_ABSENT || !(in->new & PTE_P))
				return fail(f, AGENT_E_INTERNAL, "the tables changed under the request");
			uint64_t table, e;

			if (a->ops->alloc_table(a->ctx, &table) != AGENT_OK)
				return fail(f, AGENT_E_UNSUPPORTED,
					    "the host's page-table pool is empty");
			e = (table & pg->address_mask) | PTE_P | PTE_RW | PTE_US;
			if (a->ops->write_phys(a->ctx, entry_pa, &e, sizeof(e)) != AGENT_OK)
				return fault(f, entry_pa, "page-table entry not writable");
			status = record_edit(a, canonical(pg, in->va & ~((1ULL << level_shift(at)) - 1)),
					     at, entry_pa, entry, e, f);
			if (status != AGENT_OK)
				return status;
		}
		if (entry == in->new)
			continue;
		if (a->ops->write_phys(a->ctx, entry_pa, &in->new, sizeof(in->new)) != AGENT_OK)
			return fault(f, entry_pa, "page-table entry not writable");
		status = record_edit(a, in->va, in->level, entry_pa, entry, in->new, f);
		if (status != AGENT_OK)
			return status;
		if ((entry & PTE_P) && !is_leaf(in->level, entry))
			flush_all = true; /* a whole table's worth of translations */
	}
	if (a->ops->flush_tlb) {
		if (flush_all || a->edit_count > 32)
			a->ops->flush_tlb(a->ctx, 0, true);
		else
			for (unsigned i = 0; i < a->edit_count; i++)
				a->ops->flush_tlb(a->ctx, a->edits[i].va, false);
	}
	/* The other CPUs: one round of IPIs (each acknowledges), not one per page. */
	if (a->ops->tlb_shootdown && a->edit_count) {
		if (flush_all || a->edit_count > 1)
			a->ops->tlb_shootdown(a->ctx, 0, true);
		else
			a->ops->tlb_shootdown(a->ctx, a->edits[0].va, false);
	}
	a->remaps++;
	return AGENT_OK;
}

static void write_edits(struct agent *a, struct mp_writer *w)
{
	mp_write_array(w, a->edit_count);
	for (unsigned i = 0; i < a->edit_count; i++) {
		const struct agent_edit *e = &a->edits[i];

		mp_write_array(w, 5);
		mp_write_uint(w, e->va);
		mp_write_uint(w, e->level);
		mp_write_uint(w, e->entry_pa);
		mp_write_uint(w, e->old);
		mp_write_uint(w, e->new);
	}
}

/* Phase 1: one intent, checked against what is there now. */
static int add_intent(struct agent *a, const struct paging *pg, uint64_t va, int level,
		      int kind, uint64_t value, bool force, struct failure *f)
{
	uint64_t entry_pa, entry;
	int at;
	enum reach r = reach_entry(a, pg, va, level, &entry_pa, &entry, &at);
	struct agent_edit *in = &a->intents[a->intent_count];

	if (r == REACH_UNREADABLE)
		return fault(f, va, "a page table is not readable");
	if (r == REACH_LARGE)
		return fail(f, AGENT_E_PARAMS,
			    "a larger page maps this address: change that page's level instead");
	if (r == REACH_ABSENT)
		entry = 0;
	in->va = va;
	in->level = (uint8_t)level;
	in->entry_pa = r == REACH_OK ? entry_pa : 0;
	in->old = entry;
	switch (kind) {
	case 'm': /* map: value is the leaf entry */
		in->new = value;
		break;
	case 'u': /* unmap */
		if (!(entry & PTE_P))
			return AGENT_OK;
		in->new = 0;
		break;
	case 'p': /* protect: value holds the new flag bits */
		if (!(entry & PTE_P) || !is_leaf(level, entry))
			return fault(f, va, "not mapped by a leaf of this page size");
		in->new = (entry & ~PTE_FLAG_BITS) | value | PTE_P;
		break;
	default: /* set: the raw entry */
		if (r == REACH_ABSENT && (value & PTE_P))
			return fault(f, va, "no table to put this entry in");
		if (r == REACH_ABSENT)
			return AGENT_OK;
		in->new = value;
		break;
	}
	if (!force) {
		int status = check_edit(a, pg, in, f);

		if (status != AGENT_OK)
			return status;
	}
	a->intent_count++;
	return AGENT_OK;
}

/* map [va, pa, size, page_size, flags, [force]], unmap [va, size, page_size, [force]],
 * protect [va, size, page_size, flags, [force]] */
static int edit_range(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f,
		      int kind)
{
	uint64_t va = 0, pa = 0, size = 0, page_size = 0, flags = 0;
	bool force;
	int level = 0;
	struct paging pg;
	struct agent_cpu cpu;
	int status = param_uint(p, &va, false, f);

	if (status == AGENT_OK && kind == 'm')
		status = param_uint(p, &pa, false, f);
	if (status == AGENT_OK)
		status = param_uint(p, &size, false, f);
	if (status == AGENT_OK)
		status = param_uint(p, &page_size, false, f);
	if (status == AGENT_OK && kind != 'u')
		status = param_uint(p, &flags, false, f);
	if (status == AGENT_OK)
		status = param_force(p, &force, f);
	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status == AGENT_OK)
		status = page_level(page_size, &level, f);
	if (status != AGENT_OK)
		return status;
	if (!remap_supported(a))
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no write_phys/alloc_table hooks");
	if (flags & ~(PTE_FLAG_BITS & ~PTE_P))
		return fail(f, AGENT_E_PARAMS, "flags may hold only RW US PWT PCD G NX");
	status = refuse_without_shootdown(a, force, f);
	if (status != AGENT_OK)
		return status;
	if (kind != 'u' && level == 4)
		return fail(f, AGENT_E_PARAMS, "no 512 GiB pages");
	status = protection_setup(a, &pg, &cpu, f);
	if (status != AGENT_OK)
		return status;
	/* Never overridden by force: the entry written would not be the one asked for. */
	if (!is_canonical(&pg, va) || (size && !is_canonical(&pg, va + size - 1)) ||
	    ((va + size - 1) >> 63) != (va >> 63))
		return refuse(f, va, "non-canonical: the range is not canonical or crosses the hole");
	if ((va | pa | size) & (page_size - 1) || size == 0)
		return refuse(f, va, "misaligned: address or size not a multiple of the page size");
	if (size / page_size > AGENT_EDIT_LEAVES)
		return fail(f, AGENT_E_PARAMS, "more pages than one request may change (64)");
	if (pa & ~pg.address_mask & ~((1ULL << level_shift(level)) - 1))
		return fail(f, AGENT_E_PARAMS, "physical address above MAXPHYADDR");
	a->intent_count = 0;
	for (uint64_t off = 0; off < size; off += page_size) {
		uint64_t value = flags;

		if (kind == 'm')
			value = (pa + off) | flags | PTE_P | (level > 1 ? PTE_PS : 0);
		status = add_intent(a, &pg, va + off, level, kind, value, force, f);
		if (status != AGENT_OK)
			return status;
	}
	status = apply_intents(a, &pg, f);
	if (status != AGENT_OK)
		return status;
	write_edits(a, w);
	return AGENT_OK;
}

static int m_map(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	return edit_range(a, p, w, f, 'm');
}

static int m_unmap(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	return edit_range(a, p, w, f, 'u');
}

static int m_protect(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	return edit_range(a, p, w, f, 'p');
}

/* set_entries [force, [[va, level, entry], ...]]: exact raw entries back (undo). */
static int m_set_entries(struct agent *a, struct params *p, struct mp_writer *w,
			 struct failure *f)
{
	struct mp_item list, item;
	struct paging pg;
	struct agent_cpu cpu;
	bool force;
	int status;

	if (p->count != 2)
		return fail(f, AGENT_E_PARAMS, "set_entries takes [force, entries]");
	if (!remap_supported(a))
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no write_phys/alloc_table hooks");
	status = param_force(p, &force, f);
	if (status == AGENT_OK)
		status = refuse_without_shootdown(a, force, f);
	if (status == AGENT_OK)
		status = protection_setup(a, &pg, &cpu, f);
	if (status != AGENT_OK)
		return status;
	p->taken++;
	if (!mp_read(p->r, &list) || list.type != MP_ARRAY)
		return fail(f, AGENT_E_PARAMS, "entries must be an array");
	if (list.v.n > AGENT_EDIT_LEAVES)
		return fail(f, AGENT_E_PARAMS, "more entries than one request may change (64)");
	a->intent_count = 0;
	for (uint32_t i = 0; i < list.v.n; i++) {
		uint64_t v[3];

		if (!mp_read(p->r, &item) || item.type != MP_ARRAY || item.v.n != 3)
			return fail(f, AGENT_E_PARAMS, "each entry is [va, level, entry]");
		for (int k = 0; k < 3; k++) {
			if (!mp_read(p->r, &item) || item.type != MP_UINT)
				return fail(f, AGENT_E_PARAMS, "each entry is [va, level, entry]");
			v[k] = item.v.u;
		}
		if (v[1] < 1 || v[1] > (uint64_t)pg.levels)
			return fail(f, AGENT_E_PARAMS, "level out of range");
		if (!is_canonical(&pg, v[0]))
			return refuse(f, v[0], "non-canonical: the address is not canonical");
		status = add_intent(a, &pg, v[0], (int)v[1], 's', v[2], force, f);
		if (status != AGENT_OK)
			return status;
	}
	status = apply_intents(a, &pg, f);
	if (status != AGENT_OK)
		return status;
	write_edits(a, w);
	return AGENT_OK;
}

/* True when every page of [va, va+len) translates at va+delta to the same physical page. */
static bool is_alias(struct agent *a, const struct paging *pg, uint64_t va, uint64_t len,
		     uint64_t delta, uint64_t *bad)
{
	for (uint64_t off = 0; off < len; off += PAGE_SIZE_4K) {
		struct translation t1, t2;
		struct failure ignored;
		uint64_t at = (va & ~0xfffULL) + off;

		if (translate(a, pg, at, &t1, &ignored) != AGENT_OK ||
		    translate(a, pg, at + delta, &t2, &ignored) != AGENT_OK || t1.pa != t2.pa) {
			*bad = at + delta;
			return false;
		}
	}
	return true;
}

/* move_stack [lo, hi, new_lo, [force]]: the stack in [lo, hi) onto its alias at new_lo. */
static int m_move_stack(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t lo = 0, hi = 0, new_lo = 0, bad = 0;
	bool force;
	struct paging pg;
	struct agent_cpu cpu;
	struct translation t;
	int status = param_uint(p, &lo, false, f);

	if (status == AGENT_OK)
		status = param_uint(p, &hi, false, f);
	if (status == AGENT_OK)
		status = param_uint(p, &new_lo, false, f);
	if (status == AGENT_OK)
		status = param_force(p, &force, f);
	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status != AGENT_OK)
		return status;
	if (!a->ops->rebase_stack || !a->ops->read_cpu)
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no rebase_stack hook");
	if ((lo | hi | new_lo) & 0xfff || hi <= lo)
		return refuse(f, lo, "misaligned: the stack range must be whole pages");
	status = protection_setup(a, &pg, &cpu, f);
	if (status != AGENT_OK)
		return status;
	uint64_t delta = new_lo - lo;

	if (!is_canonical(&pg, new_lo) || !is_canonical(&pg, new_lo + (hi - lo) - 1))
		return refuse(f, new_lo, "non-canonical: the new stack is not canonical");
	if (cpu.rsp < lo || cpu.rsp >= hi)
		return fail(f, AGENT_E_PARAMS, "RSP is not in [lo, hi)");
	/* Always checked: a stack that is not the same memory would lose every frame. */
	if (!is_alias(a, &pg, lo, hi - lo, delta, &bad))
		return refuse(f, bad, "not-an-alias: the new range does not map the same physical pages");
	if (!force && translate(a, &pg, new_lo - PAGE_SIZE_4K, &t, f) == AGENT_OK)
		return refuse(f, new_lo - PAGE_SIZE_4K,
			      "no-guard-page: the page below the new stack is mapped");
	uint64_t saved = a->ops->irq_save ? a->ops->irq_save(a->ctx) : 0;
	uint64_t old_rsp = cpu.rsp;

	a->ops->rebase_stack((int64_t)delta, lo, hi);
	if (a->have_caller && a->caller_rsp >= lo && a->caller_rsp < hi) {
		a->caller_rsp += delta;
		if (a->caller_rbp >= lo && a->caller_rbp < hi)
			a->caller_rbp += delta;
	}
	if (a->ops->irq_save)
		a->ops->irq_restore(a->ctx, saved);
	a->remaps++;
	mp_write_array(w, 2);
	mp_write_uint(w, old_rsp);
	mp_write_uint(w, old_rsp + delta);
	return AGENT_OK;
}

/* load_descriptors [gdt_base, idt_base, tss_base, [force]]: GDTR, IDTR (CS by far return), TR. */
static int m_load_descriptors(struct agent *a, struct params *p, struct mp_writer *w,
			      struct failure *f)
{
	uint64_t gdt = 0, idt = 0, tss = 0, old_tss = 0, tss_limit, bad = 0;
	bool force;
	struct paging pg;
	struct agent_cpu cpu;
	int status = param_uint(p, &gdt, false, f);

	if (status == AGENT_OK)
		status = param_uint(p, &idt, false, f);
	if (status == AGENT_OK)
		status = param_uint(p, &tss, false, f);
	if (status == AGENT_OK)
		status = param_force(p, &force, f);
	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status != AGENT_OK)
		return status;
	if (!a->ops->load_descriptors || !a->ops->read_cpu)
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no load_descriptors hook");
	status = protection_setup(a, &pg, &cpu, f);
	if (status != AGENT_OK)
		return status;
	if (!system_segment(a, &pg, &cpu, cpu.tr, &old_tss, &tss_limit))
		old_tss = 0; /* no TSS loaded */
	if (!is_canonical(&pg, gdt) || !is_canonical(&pg, idt) || !is_canonical(&pg, tss))
		return refuse(f, gdt, "non-canonical: a new base is not canonical");
	if (!force &&
	    (!is_alias(a, &pg, cpu.gdtr_base, cpu.gdtr_limit + 1ULL, gdt - cpu.gdtr_base, &bad) ||
	     !is_alias(a, &pg, cpu.idtr_base, cpu.idtr_limit + 1ULL, idt - cpu.idtr_base, &bad) ||
	     (old_tss && !is_alias(a, &pg, old_tss, 0x68, tss - old_tss, &bad))))
		return refuse(f, bad, "not-an-alias: a new base does not map the same physical memory");
	uint64_t saved = a->ops->irq_save ? a->ops->irq_save(a->ctx) : 0;

	status = a->ops->load_descriptors(a->ctx, gdt, idt, tss);
	if (a->ops->irq_save)
		a->ops->irq_restore(a->ctx, saved);
	if (status != AGENT_OK)
		return fail(f, status, "load_descriptors failed");
	a->remaps++;
	mp_write_array(w, 2);
	mp_write_array(w, 3);
	mp_write_uint(w, cpu.gdtr_base);
	mp_write_uint(w, cpu.idtr_base);
	mp_write_uint(w, old_tss);
	mp_write_array(w, 3);
	mp_write_uint(w, gdt);
	mp_write_uint(w, idt);
	mp_write_uint(w, tss);
	return AGENT_OK;
}

/* switch_cr3 [cr3, [force]]: refused unless the new tables map what the agent needs the same way. */
static int m_switch_cr3(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t cr3 = 0;
	bool force;
	struct paging pg, next;
	struct agent_cpu cpu;
	int status = param_uint(p, &cr3, false, f);

	if (status == AGENT_OK)
		status = param_force(p, &force, f);
	if (status == AGENT_OK)
		status = params_done(p, f);
	if (status != AGENT_OK)
		return status;
	if (!a->ops->write_cr3 || !a->ops->read_cpu)
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no write_cr3 hook");
	status = protection_setup(a, &pg, &cpu, f);
	if (status != AGENT_OK)
		return status;
	next = pg;
	next.root = cr3 & pg.address_mask;
	if (!force)
		for (unsigned i = 0; i < a->protected_count; i++) {
			const struct agent_protected *pr = &a->protected[i];

			for (uint64_t va = pr->lo; va < pr->hi; va += PAGE_SIZE_4K) {
				struct translation t1, t2;
				struct failure ignored;

				if (translate(a, &pg, va, &t1, &ignored) != AGENT_OK)
					continue;
				if (translate(a, &next, va, &t2, &ignored) != AGENT_OK ||
				    t1.pa != t2.pa)
					return refuse(f, va, prot_message[pr->kind]);
			}
		}
	status = a->ops->write_cr3(a->ctx, cr3);
	if (status != AGENT_OK)
		return fail(f, status, "write_cr3 failed");
	a->remaps++;
	mp_write_uint(w, cpu.cr3);
	return AGENT_OK;
}

#endif /* !AGENT_READONLY */

#if defined(AGENT_ENABLE_MEMORY_WRITES) && !defined(AGENT_READONLY)
/*
 * write_phys [pa, bytes]: arbitrary physical writes, only in an agent the host
 * kernel builds with -DAGENT_ENABLE_MEMORY_WRITES (the demo kernel does not).
 * No safety checks: this is the debugger's poke.
 */
static int m_write_phys(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f)
{
	uint64_t pa = 0;
	struct mp_item data;
	int status = param_uint(p, &pa, false, f);

	if (status != AGENT_OK)
		return status;
	if (p->taken == p->count)
		return fail(f, AGENT_E_PARAMS, "missing parameter");
	p->taken++;
	if (!mp_read(p->r, &data) || data.type != MP_BIN)
		return fail(f, AGENT_E_PARAMS, "bytes must be a bin");
	status = params_done(p, f);
	if (status != AGENT_OK)
		return status;
	if (!a->ops->write_phys)
		return fail(f, AGENT_E_UNSUPPORTED, "the host gives no write_phys hook");
	if (pa + data.v.bytes.len < pa)
		return fault(f, pa, "range wraps around");
	if (a->ops->write_phys(a->ctx, pa, data.v.bytes.data, data.v.bytes.len) != AGENT_OK)
		return fault(f, pa, "physical range not writable");
	mp_write_uint(w, data.v.bytes.len);
	return AGENT_OK;
}
#endif

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
	{ "link_stats", m_link_stats, false },
	{ "stop", m_stop, true },
	{ "resume", m_resume, true },
#ifndef AGENT_READONLY
	{ "map", m_map, true },
	{ "unmap", m_unmap, true },
	{ "protect", m_protect, true },
	{ "set_entries", m_set_entries, true },
	{ "move_stack", m_move_stack, true },
	{ "load_descriptors", m_load_descriptors, true },
	{ "switch_cr3", m_switch_cr3, true },
#endif
	{ "efi_info", agent_m_efi_info, false },
#ifndef AGENT_READONLY
	{ "efi_set_virtual_address_map", agent_m_efi_set_virtual_address_map, true },
#endif
	{ "efi_get_time", agent_m_efi_get_time, false },
	{ "efi_get_variable", agent_m_efi_get_variable, false },
	{ "efi_next_variable_name", agent_m_efi_next_variable_name, false },
#if defined(AGENT_ENABLE_MEMORY_WRITES) && !defined(AGENT_READONLY)
	{ "write_phys", m_write_phys, true },
#endif
};

static const char *const method_names[] = {
	"hello", "regs", "read_phys", "read_virt", "translate", "walk", "link_stats", "stop",
	"resume",
#ifndef AGENT_READONLY
	"map", "unmap", "protect", "set_entries", "move_stack", "load_descriptors", "switch_cr3",
#endif
	"efi_info",
#ifndef AGENT_READONLY
	"efi_set_virtual_address_map",
#endif
	"efi_get_time", "efi_get_variable", "efi_next_variable_name",
#if defined(AGENT_ENABLE_MEMORY_WRITES) && !defined(AGENT_READONLY)
	"write_phys",
#endif
	NULL,
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

/*
 * One frame of the reply kept in tx_buf (the last request's): the whole reply
 * when it is small or the host speaks link 1, else the chunk of at most size
 * bytes at offset, [4, id, offset, total, bin].
 */
static void send_part(struct agent *a, uint32_t offset, uint32_t size)
{
	struct mp_writer w;
	uint32_t total = a->last_len;

	if (a->link < 2 || total <= AGENT_CHUNK_FIRST) {
		a->last_chunk = false;
		send_body(a, total);
		return;
	}
	if (offset > total)
		offset = total;
	if (size == 0 || size > AGENT_CHUNK_MAX)
		size = size ? AGENT_CHUNK_MAX : AGENT_CHUNK_FIRST;
	if (size > total - offset)
		size = total - offset;
	mp_writer_init(&w, a->chunk_buf, sizeof(a->chunk_buf) - 4);
	mp_write_array(&w, 5);
	mp_write_uint(&w, 4);
	mp_write_uint(&w, a->last_id);
	mp_write_uint(&w, offset);
	mp_write_uint(&w, total);
	mp_write_bin(&w, a->tx_buf + offset, size);
	if (w.overflow)
		return; /* cannot happen: chunk_buf holds AGENT_CHUNK_MAX and the header */
	a->last_chunk = true;
	a->last_offset = offset;
	a->last_size = size;
	a->chunks_sent++;
	agent_frame_write(a->chunk_buf, w.len, a->ops->tx, a->ctx);
}

/* The reply now in tx_buf (len bytes) answers id: kept for NAKs, its first frame sent. */
static void send_reply(struct agent *a, uint32_t id, size_t len)
{
	a->last_valid = true;
	a->last_id = id;
	a->last_len = (uint32_t)len;
	send_part(a, 0, a->first_chunk);
}

/* [2, id, known]: the frame that came was damaged; id is its own when known. */
static void send_nak(struct agent *a, uint32_t id, bool known)
{
	struct mp_writer w;

	mp_writer_init(&w, a->nak_buf, sizeof(a->nak_buf) - 4);
	mp_write_array(&w, 3);
	mp_write_uint(&w, 2);
	mp_write_uint(&w, id);
	mp_write_bool(&w, known);
	a->naks_sent++;
	agent_frame_write(a->nak_buf, w.len, a->ops->tx, a->ctx);
}

/*
 * A damaged frame from the host: ask for it again at once, naming its id when
 * its first bytes survived ([type, id, ...]), else the id expected next.
 */
static void handle_damaged(void *ctx, const uint8_t *prefix, size_t len)
{
	struct agent *a = ctx;
	struct mp_reader r;
	struct mp_item item;

	if (len == 0)
		return;
	mp_reader_init(&r, prefix, len);
	if (prefix[0] >= 0x92 && prefix[0] <= 0x95 && mp_read(&r, &item) && item.type == MP_ARRAY &&
	    mp_read(&r, &item) &&
	    item.type == MP_UINT && item.v.u <= 4 && mp_read(&r, &item) && item.type == MP_UINT &&
	    item.v.u <= 0xffffffffULL) {
		send_nak(a, (uint32_t)item.v.u, true);
		return;
	}
	send_nak(a, a->expected_id, false);
}

static struct agent_replay *replay_find(struct agent *a, uint32_t id);

/*
 * [2, id, offset, size] (NAK: that frame came damaged) or [3, id, offset, size]
 * (ACK: it came, send the next): the part of reply id at offset. A reply this
 * agent no longer has is answered with a NAK naming it (send the request again).
 */
static bool handle_link(struct agent *a, uint8_t type, struct mp_reader *r)
{
	struct mp_item id, offset, size;

	if (!mp_read(r, &id) || id.type != MP_UINT || id.v.u > 0xffffffffULL ||
	    !mp_read(r, &offset) || offset.type != MP_UINT || offset.v.u > 0xffffffffULL ||
	    !mp_read(r, &size) || size.type != MP_UINT || r->pos != r->len)
		return false; /* malformed: answered as any malformed frame is */
	if (type == 2)
		a->naks_received++;
	if (!a->last_valid || a->last_id != (uint32_t)id.v.u) {
		struct agent_replay *kept = replay_find(a, (uint32_t)id.v.u);

		if (!kept) {
			send_nak(a, (uint32_t)id.v.u, true);
			return true;
		}
		for (size_t i = 0; i < kept->len; i++)
			a->tx_buf[i] = kept->reply[i];
		a->last_valid = true;
		a->last_id = kept->id;
		a->last_len = kept->len;
	}
	if (size.v.u > AGENT_CHUNK_MAX)
		size.v.u = AGENT_CHUNK_MAX;
	/* The host's chunk size says how noisy the line is: first chunks no larger. */
	if (size.v.u >= 16)
		a->first_chunk = size.v.u < AGENT_CHUNK_FIRST ? (uint32_t)size.v.u : AGENT_CHUNK_FIRST;
	send_part(a, (uint32_t)offset.v.u, (uint32_t)size.v.u);
	return true;
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

/* The other CPUs stand still while a request runs (and from "stop" to "resume"). */
static void hold_others(struct agent *a)
{
	if (a->holding || !a->ops->hold_others || !a->ops->release_others || cpus_online(a) <= 1)
		return;
	a->ops->hold_others(a->ctx);
	a->holding = true;
}

static void release_others(struct agent *a)
{
	if (!a->holding)
		return;
	a->holding = false;
	a->ops->release_others(a->ctx);
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

	mp_reader_init(&r, body, len);
	f.message = "not a [0, id, method, params] request";
	if (!mp_read(&r, &item) || item.type != MP_ARRAY)
		goto malformed;
	uint32_t count = item.v.n;

	if (!mp_read(&r, &item) || item.type != MP_UINT)
		goto malformed;
	if ((item.v.u == 2 || item.v.u == 3) && count == 4 && handle_link(a, (uint8_t)item.v.u, &r))
		return;
	if (count != 4 || item.v.u != 0)
		goto malformed;
	if (!mp_read(&r, &item) || item.type != MP_UINT || item.v.u > 0xffffffffULL)
		goto malformed;
	id = (uint32_t)item.v.u;
	a->requests++;
	a->expected_id = id + 1;
	/* The request whose reply was sent last, again (its reply was lost): the same reply. */
	if (a->last_valid && a->last_id == id) {
		a->replayed++;
		send_part(a, 0, a->first_chunk);
		return;
	}
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
			a->replayed++;
			send_reply(a, id, kept->len);
			return;
		}
	}

	struct params p = { &r, params_head.v.n, 0 };

	mp_writer_init(&w, a->tx_buf, sizeof(a->tx_buf) - 4);
	mp_write_array(&w, 4);
	mp_write_uint(&w, 1);
	mp_write_uint(&w, id);
	mp_write_nil(&w);
	hold_others(a);
	status = m->fn(a, &p, &w, &f);
	if (!a->stopped)
		release_others(a); /* after "stop" they stay held until "resume" */
	if (status == AGENT_OK && w.overflow)
		status = fail(&f, AGENT_E_TOO_BIG, "reply too big for a frame");
	if (status != AGENT_OK)
		goto error;
	if (m->mutating)
		replay_store(a, id, w.len);
	send_reply(a, id, w.len);
	return;
malformed:
	a->requests++;
error:
	reply_error(a, &w, id, status, &f);
	if (m && m->mutating)
		replay_store(a, id, w.len);
	send_reply(a, id, w.len);
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
	agent->holding = false;
	agent->irq_saved = false;
	agent->have_caller = false;
	agent->stops = agent->requests = agent->errors = agent->remaps = 0;
	agent->replay_next = 0;
	for (unsigned i = 0; i < AGENT_REPLAY_SLOTS; i++)
		agent->replay[i].used = false;
	agent_efi_init(agent);
	agent->link = 1;
	agent->first_chunk = AGENT_CHUNK_FIRST;
	agent->last_valid = false;
	agent->last_chunk = false;
	agent->last_id = agent->expected_id = 0;
	agent->naks_sent = agent->naks_received = agent->chunks_sent = agent->replayed = 0;
	agent_frame_decoder_init(&agent->decoder, agent->rx_buf, AGENT_MAX_REQUEST, handle_frame,
				 console_byte, agent);
	agent->decoder.on_damaged = handle_damaged;
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
