/*
 * What agent.c shares with agent_efi.c: the failure record of a method, its
 * parameter reader, and the page-table walk the safety checks use. Not part
 * of the agent's API (agent.h).
 */
#ifndef AGENT_INTERNAL_H
#define AGENT_INTERNAL_H

#include "agent.h"
#include "agent_msgpack.h"

/* What a failed method reports beyond its status. */
struct failure {
	const char *message;
	uint64_t address;
	bool has_address;
};

struct params {
	struct mp_reader *r;
	uint32_t count;
	uint32_t taken;
};

struct paging {
	int levels; /* 4 or 5 */
	bool nxe;
	uint64_t root;
	uint64_t address_mask; /* bits 12..MAXPHYADDR-1 */
	uint64_t reserved_high; /* bits MAXPHYADDR..51 (and NX without EFER.NXE) */
};

struct translation {
	uint64_t pa;
	uint64_t page_size;
	uint32_t flags; /* AGENT_RANGE_* */
	int steps;
	uint64_t entries[5];
};

/* Range flags on the wire (AGENT_PROTOCOL.md, "walk"). */
#define AGENT_RANGE_W (1u << 0)
#define AGENT_RANGE_X (1u << 2)

typedef int (*agent_method_fn)(struct agent *a, struct params *p, struct mp_writer *w,
			       struct failure *f);

/* f gets the message (and the address); the status is returned. */
int agent_fail(struct failure *f, int status, const char *message);
int agent_fail_at(struct failure *f, int status, uint64_t address, const char *message);
int agent_param_uint(struct params *p, uint64_t *v, bool optional, struct failure *f);
int agent_params_done(struct params *p, struct failure *f);
/* The paging mode from read_cpu (unsupported without it or outside long mode). */
int agent_paging_setup(struct agent *a, struct paging *pg, struct failure *f);
/* Walks the tables through read_phys: never touches va itself. */
int agent_translate(struct agent *a, const struct paging *pg, uint64_t va, struct translation *t,
		    struct failure *f);
bool agent_is_canonical(const struct paging *pg, uint64_t va);

/* agent_efi.c: the UEFI runtime services methods (AGENT_PROTOCOL.md, section 4). */
int agent_m_efi_info(struct agent *a, struct params *p, struct mp_writer *w, struct failure *f);
int agent_m_efi_set_virtual_address_map(struct agent *a, struct params *p, struct mp_writer *w,
					struct failure *f);
int agent_m_efi_get_time(struct agent *a, struct params *p, struct mp_writer *w,
			 struct failure *f);
int agent_m_efi_get_variable(struct agent *a, struct params *p, struct mp_writer *w,
			     struct failure *f);
int agent_m_efi_next_variable_name(struct agent *a, struct params *p, struct mp_writer *w,
				   struct failure *f);
void agent_efi_init(struct agent *a);
/* After SetVirtualAddressMap: the k-th runtime region's new VA and size (false past the last). */
bool agent_efi_virtual_range(const struct agent *a, unsigned k, uint64_t *va, uint64_t *size);

#endif
