/*
 * kinspect agent: answers the inspector's requests over a serial line that it
 * shares with the kernel's console (protocols/AGENT_PROTOCOL.md).
 *
 * A host kernel embeds it like this (see kernel-agent/README.md):
 *
 *	static struct agent agent;
 *	static const struct agent_ops ops = { .rx = ..., .tx = ..., .read_phys = ...,
 *					       .read_cpu = agent_x86_read_cpu };
 *	agent_init(&agent, &ops, my_context);
 *	... in the idle loop or the UART interrupt:
 *	agent_poll(&agent);
 *
 * No libc, no allocation, no floating point: all state is in struct agent.
 * Every call returns an agent_status; agent_strerror() names it.
 */
#ifndef AGENT_H
#define AGENT_H

#include "agent_types.h"
#include "agent_wire.h"

#define AGENT_VERSION "0.1.0"
#define AGENT_PROTOCOL_VERSION 1
/*
 * The link layer (AGENT_PROTOCOL.md, section 2): 1 is requests and whole
 * replies, retried on silence; 2 adds NAKs (a damaged frame is asked for
 * again at once) and chunked replies. A host asks for 2 with "hello [2]".
 */
#define AGENT_LINK_VERSION 2
/* With link 2, a reply body longer than this goes in chunks; the first holds this much. */
#define AGENT_CHUNK_FIRST 128
/* The most a chunk holds (a host asks for less on a noisy line). */
#define AGENT_CHUNK_MAX 1024
/* Largest read_phys/read_virt a request may ask for (fits one reply frame). */
#define AGENT_MAX_READ 4096
/* Mutating requests whose replies are kept for retries. */
#define AGENT_REPLAY_SLOTS 8
/* A kept reply holds up to this many bytes (a remap's replaced entries fit). */
#define AGENT_REPLAY_MAX 3456
/* Page-table entries one remap request may change (leaves, new tables included). */
#define AGENT_EDIT_MAX 72
/* Leaf entries one map/unmap/protect request may change. */
#define AGENT_EDIT_LEAVES 64
/* Page tables the safety checks track (more: the rest is not protected, and said so). */
#define AGENT_TABLES_MAX 256
/* Protected ranges: the tables, code, stack and descriptors, and the UEFI runtime regions. */
#define AGENT_PROTECTED_MAX (AGENT_TABLES_MAX + 16 + 64)

/* Statuses other than AGENT_OK and AGENT_E_ARG are also the error codes on the wire. */
enum agent_status {
	AGENT_OK = 0,
	AGENT_E_MALFORMED = 1, /* a frame that is not a valid request */
	AGENT_E_METHOD = 2, /* unknown method */
	AGENT_E_PARAMS = 3, /* wrong number or type of parameters */
	AGENT_E_FAULT = 4, /* address not mapped or not readable */
	AGENT_E_TOO_BIG = 5, /* the reply would not fit a frame */
	AGENT_E_UNSUPPORTED = 6, /* the host did not provide the hook */
	AGENT_E_INTERNAL = 7,
	AGENT_E_ARG = 8, /* a bad argument to an agent_* call (local only) */
	AGENT_E_REFUSED = 9, /* a remap refused for safety; the message names the reason */
	AGENT_E_EFI = 10, /* the firmware returned an error status (agent_efi.c) */
};

/* Arguments every UEFI call gets (the services the agent calls take at most 5). */
#define AGENT_EFI_ARGS 5
/* Runtime descriptors the agent hands SetVirtualAddressMap, and its bound on DescriptorSize. */
#define AGENT_EFI_MAP_MAX 2048
/* UCS-2 characters of a variable name, terminator included; bytes of variable data. */
#define AGENT_EFI_NAME_MAX 256
#define AGENT_EFI_DATA_MAX 1024

/*
 * What a host booted through UEFI tells the agent (agent_efi.c): the system
 * table's physical address and the memory map it kept from ExitBootServices
 * (the agent copies the EFI_MEMORY_RUNTIME descriptors from it for
 * SetVirtualAddressMap). The map and the attributes table are read directly,
 * at the kernel addresses given here.
 */
struct agent_efi {
	uint64_t system_table; /* physical address of EFI_SYSTEM_TABLE */
	const void *memmap; /* EFI_MEMORY_DESCRIPTORs, desc_size apart */
	uint64_t memmap_size, desc_size;
	uint32_t desc_version;
	const void *memattr; /* a copy of EFI_MEMORY_ATTRIBUTES_TABLE, or NULL */
	uint64_t memattr_size;
};

/* CPU state a host reports through read_cpu (x86_64: agent_x86_read_cpu). */
struct agent_cpu {
	uint64_t cr0, cr2, cr3, cr4, cr8;
	uint64_t efer, pat;
	uint64_t rip, rsp, rbp, rflags; /* where read_cpu runs: the agent's own frame */
	uint64_t gdtr_base, idtr_base;
	uint16_t gdtr_limit, idtr_limit;
	uint16_t cs, ss, ds, es, fs, gs, tr, ldtr;
	uint8_t maxphyaddr; /* CPUID.80000008h:EAX[7:0]; 0 means 52 */
};

struct agent_ops {
	/* Required: the next received byte, or -1 if none is waiting (never blocks). */
	int (*rx)(void *ctx);
	/* Required: send bytes (may busy-wait on the UART). */
	void (*tx)(void *ctx, const uint8_t *buf, size_t len);
	/*
	 * Required: copy physical memory into buf. Return AGENT_OK, or
	 * AGENT_E_FAULT for a range the host cannot read safely (not RAM, MMIO).
	 * The page-table walk and virtual reads go through this call only.
	 */
	int (*read_phys)(void *ctx, uint64_t pa, void *buf, size_t len);
	/* Optional: fill in the CPU state (regs, walk and read_virt need it). */
	int (*read_cpu)(void *ctx, struct agent_cpu *cpu);
	/* Optional: a byte of console input (outside frames) typed on the line. */
	void (*console_input)(void *ctx, uint8_t byte);
	/*
	 * Optional: disable interrupts, returning what irq_restore needs. On x86
	 * that is RFLAGS, and while stopped "regs" reports it as rflags (the
	 * kernel's flags before the agent masked interrupts).
	 */
	uint64_t (*irq_save)(void *ctx);
	void (*irq_restore)(void *ctx, uint64_t saved);
	/* Optional: called while stopped and no byte is waiting (e.g. pause). */
	void (*relax)(void *ctx);

	/*
	 * Remaps (map, unmap, protect, set_entries): all four below are needed,
	 * or those methods answer "unsupported". The agent writes page-table
	 * entries only; writes to other memory are not part of the protocol.
	 */
	/* Write physical memory (the agent writes page-table entries with it). */
	int (*write_phys)(void *ctx, uint64_t pa, const void *buf, size_t len);
	/* A zeroed page for a new page table, from a pool the host set aside. */
	int (*alloc_table)(void *ctx, uint64_t *pa);
	/* Flush the TLB: the page of va (invlpg), or everything, globals included. */
	void (*flush_tlb)(void *ctx, uint64_t va, bool all);
	/* Where the host reaches physical memory (its direct map): protected for tables. */
	uint64_t (*phys_to_virt)(void *ctx, uint64_t pa);
	/* The host kernel's code, protected like the page the agent runs on (0, 0: none). */
	uint64_t code_start, code_end;

	/*
	 * Optional, x86_64 (agent_x86.c has them): move the stack by delta
	 * (RSP, RBP and the saved frame pointers in [lo, hi)); load GDTR/IDTR at
	 * new bases, CS by a far return, TR after pointing its descriptor at
	 * tss_base; load CR3.
	 */
	void (*rebase_stack)(int64_t delta, uint64_t lo, uint64_t hi);
	int (*load_descriptors)(void *ctx, uint64_t gdt_base, uint64_t idt_base, uint64_t tss_base);
	int (*write_cr3)(void *ctx, uint64_t cr3);

	/*
	 * UEFI runtime services (efi_*): both, or those methods answer
	 * "unsupported" (a PVH boot gives none). efi_call calls fn with the MS
	 * x64 ABI (args in RCX, RDX, R8, R9, the fifth on the stack above 32
	 * bytes of shadow space, RSP 16-byte aligned) and returns its
	 * EFI_STATUS: agent_x86_efi_call. The agent masks interrupts around it.
	 */
	const struct agent_efi *efi;
	uint64_t (*efi_call)(void *ctx, uint64_t fn, const uint64_t args[AGENT_EFI_ARGS]);
	/*
	 * Several CPUs. cpus_online: how many CPUs run the kernel now (absent:
	 * one). hold_others / release_others (both or neither): stop every other
	 * CPU (an IPI or NMI each acknowledges, then spins) and let them go; the
	 * agent holds them while it serves a request, and from "stop" to
	 * "resume", so that reads and writes see one consistent kernel.
	 * tlb_shootdown: flush the page of va, or everything (globals included),
	 * on every other CPU, returning once each has acknowledged; a held CPU
	 * must still flush. With more than one CPU online and no tlb_shootdown,
	 * every page-table change is refused (no-shootdown): it would leave stale
	 * translations on the other CPUs.
	 */
	unsigned (*cpus_online)(void *ctx);
	void (*hold_others)(void *ctx);
	void (*release_others)(void *ctx);
	void (*tlb_shootdown)(void *ctx, uint64_t va, bool all);
	/*
	 * Optional: a number that differs on every boot of the host kernel and
	 * stays the same until the next (0: none). hello reports it as
	 * boot_nonce, and the inspector keeps its remap journal per kernel
	 * instance by it (without one: CR3 and the kernel's build id). Any
	 * entropy the kernel has will do: RDRAND, a TSC read at boot mixed with
	 * the RTC (the demo kernel's), a random UUID the kernel made.
	 */
	uint64_t boot_nonce;
};

struct agent_replay {
	uint32_t id;
	bool used;
	uint16_t len;
	uint8_t reply[AGENT_REPLAY_MAX];
};

struct agent {
	const struct agent_ops *ops;
	void *ctx;
	int last_error;
	bool stopped;
	bool holding; /* the other CPUs are held (hold_others) */
	uint32_t stops; /* times a stop request took effect */
	uint32_t requests, errors;
	bool irq_saved; /* while stopped: what irq_save returned */
	uint64_t irq_state;
	/* Where the kernel called agent_poll (x86_64): reported by "regs" while stopped. */
	bool have_caller;
	uint64_t caller_rip, caller_rsp, caller_rbp;
	struct agent_frame_decoder decoder;
	uint8_t rx_buf[AGENT_COBS_MAX(AGENT_MAX_REQUEST)];
	uint8_t tx_buf[AGENT_MAX_FRAME];
	struct agent_replay replay[AGENT_REPLAY_SLOTS];
	unsigned replay_next;
	/* Scratch for remaps (kept here, not on the kernel's small stack). */
	uint64_t tables[AGENT_TABLES_MAX];
	unsigned table_count;
	struct agent_protected {
		uint64_t lo, hi;
		uint8_t kind;
	} protected[AGENT_PROTECTED_MAX];
	unsigned protected_count;
	struct agent_edit {
		uint64_t va, entry_pa, old, new;
		uint8_t level;
	} edits[AGENT_EDIT_MAX], intents[AGENT_EDIT_LEAVES];
	unsigned edit_count, intent_count;
	uint32_t remaps; /* remap requests applied */

	/* The link (AGENT_PROTOCOL.md, section 2): the last reply, kept for NAKs and chunks. */
	uint8_t link; /* what the host asked for in hello: 1 or 2 */
	bool last_valid; /* tx_buf holds the reply to last_id (last_len bytes) */
	uint32_t last_id;
	uint32_t last_len;
	bool last_chunk; /* the last frame sent for last_id was a chunk: */
	uint32_t last_offset, last_size; /* ... of these bytes */
	uint32_t first_chunk; /* a reply's first chunk: AGENT_CHUNK_FIRST, less when the host asks less */
	uint32_t expected_id; /* the id after the last request: what a NAK names when unsure */
	uint32_t naks_sent, naks_received, chunks_sent, replayed;
	uint8_t chunk_buf[AGENT_CHUNK_MAX + 32];
	uint8_t nak_buf[24];

	/* UEFI runtime services (agent_efi.c); buffers the firmware reads and writes. */
	bool efi_virtual; /* SetVirtualAddressMap succeeded: efi_map holds the VAs */
	uint64_t efi_st_va;
	uint8_t efi_map[AGENT_EFI_MAP_MAX] __attribute__((aligned(8)));
	uint64_t efi_map_size;
	uint16_t efi_name[AGENT_EFI_NAME_MAX] __attribute__((aligned(8)));
	/* The raw name GetNextVariableName gave last, so "?" in a name it sent still enumerates. */
	uint16_t efi_next_name[AGENT_EFI_NAME_MAX] __attribute__((aligned(8)));
	uint8_t efi_next_guid[16] __attribute__((aligned(8)));
	bool efi_have_next;
	uint8_t efi_guid[16] __attribute__((aligned(8)));
	uint8_t efi_data[AGENT_EFI_DATA_MAX] __attribute__((aligned(8)));
	uint8_t efi_time[16] __attribute__((aligned(8)));
	uint64_t efi_size;
	uint32_t efi_attributes;
	char efi_message[40]; /* "EFI status 0x..." for a status without a name */
};

int agent_init(struct agent *agent, const struct agent_ops *ops, void *ctx);
/*
 * Handles every byte waiting on the line. After a "stop" request it keeps
 * serving requests, with interrupts off, until "resume".
 */
int agent_poll(struct agent *agent);
/* Handles one received byte (for hosts that get bytes from an interrupt). */
int agent_feed(struct agent *agent, uint8_t byte);
const char *agent_strerror(int status);
/* The status of the last failed call (or the last error answered). */
int agent_last_error(const struct agent *agent);

/* x86_64 hooks (agent_x86.c): CRs, MSRs, descriptor registers; cli/sti; pause. */
int agent_x86_read_cpu(void *ctx, struct agent_cpu *cpu);
uint64_t agent_x86_irq_save(void *ctx);
void agent_x86_irq_restore(void *ctx, uint64_t saved);
void agent_x86_relax(void *ctx);
void agent_x86_flush_tlb(void *ctx, uint64_t va, bool all);
void agent_x86_rebase_stack(int64_t delta, uint64_t lo, uint64_t hi);
int agent_x86_load_descriptors(void *ctx, uint64_t gdt_base, uint64_t idt_base, uint64_t tss_base);
int agent_x86_write_cr3(void *ctx, uint64_t cr3);
uint64_t agent_x86_efi_call(void *ctx, uint64_t fn, const uint64_t args[AGENT_EFI_ARGS]);

#endif
