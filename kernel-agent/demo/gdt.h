/*
 * Kernel GDT with a 64-bit TSS (RSP0 and IST1 for #DF) and a small LDT. No
 * segment register ever holds an LDT selector: the LDT is there so that an
 * inspector has one to decode (a 32-bit code segment, a data segment whose
 * base and limit use every split field, a not-present segment, a call gate).
 */
#ifndef DEMO_GDT_H
#define DEMO_GDT_H

#include "layout.h"
#include "types.h"

/* Segment descriptor access byte (SDM Vol. 3A 3.4.5). */
#define SEG_A (1U << 0) /* accessed */
#define SEG_RW (1U << 1) /* readable code / writable data */
#define SEG_E (1U << 3) /* executable */
#define SEG_S (1U << 4) /* code or data (not system) */
#define SEG_DPL(n) ((unsigned)(n) << 5)
#define SEG_P (1U << 7) /* present */
/* Flags nibble (descriptor bits 55:52). */
#define SEG_FLAG_L 0x2 /* 64-bit code */
#define SEG_FLAG_DB 0x4
#define SEG_FLAG_G 0x8 /* 4 KiB limit granularity */
/* System descriptor types in IA-32e mode (SDM Vol. 3A Table 3-2). */
#define SEG_TYPE_LDT 0x2
#define SEG_TYPE_TSS64_AVAILABLE 0x9
#define SEG_TYPE_CALL_GATE64 0xc

/* Table indicator of a selector: 1 selects from the LDT. */
#define SEL_TI 0x4

/* The LDT's descriptor comes after the existing slots, so their selectors stay. */
#define GDT_LDT 0x38

/* Selectors of the LDT's entries (TI=1, RPL 0). */
#define LDT_USER_CODE32 (0x00 | SEL_TI)
#define LDT_USER_DATA (0x08 | SEL_TI)
#define LDT_NOT_PRESENT (0x10 | SEL_TI)
#define LDT_CALL_GATE (0x18 | SEL_TI)
/* LDT_USER_DATA's base and limit (byte granular): bits in every split field. */
#define LDT_USER_DATA_BASE 0x12345000
#define LDT_USER_DATA_LIMIT 0x2ffff

#define IST_DOUBLE_FAULT 1

struct tss {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7]; /* ist[0] is IST1 */
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __packed;

_Static_assert(sizeof(struct tss) == 104, "64-bit TSS layout");

/* The 16-byte system descriptor of a TSS or an LDT (SDM Vol. 3A Figure 7-4). */
struct system_descriptor {
	uint16_t limit_low; /* limit 15:0 */
	uint16_t base_low; /* base 15:0 */
	uint8_t base_mid; /* base 23:16 */
	uint8_t access; /* P, DPL, type */
	uint8_t limit_high_flags; /* limit 19:16, flags G/AVL */
	uint8_t base_high; /* base 31:24 */
	uint32_t base_upper; /* base 63:32 */
	uint32_t reserved;
} __packed;

_Static_assert(sizeof(struct system_descriptor) == 16, "TSS/LDT descriptor layout");

/* A 64-bit call gate (SDM Vol. 3A Figure 5-9), 16 bytes in the GDT or an LDT. */
struct call_gate64 {
	uint16_t offset_low; /* offset 15:0 */
	uint16_t selector; /* target code segment */
	uint8_t reserved0;
	uint8_t access; /* P, DPL, type 1100b */
	uint16_t offset_mid; /* offset 31:16 */
	uint32_t offset_high; /* offset 63:32 */
	uint32_t reserved1; /* bits 12:8 (the upper half's type) must be 0 */
} __packed;

_Static_assert(sizeof(struct call_gate64) == 16, "64-bit call gate layout");

struct ldt {
	uint64_t user_code32;
	uint64_t user_data;
	uint64_t not_present;
	struct call_gate64 call_gate;
} __packed;

_Static_assert(sizeof(struct ldt) == 40, "LDT layout");
_Static_assert(offsetof(struct ldt, user_code32) == (LDT_USER_CODE32 & ~SEL_TI), "selector");
_Static_assert(offsetof(struct ldt, user_data) == (LDT_USER_DATA & ~SEL_TI), "selector");
_Static_assert(offsetof(struct ldt, not_present) == (LDT_NOT_PRESENT & ~SEL_TI), "selector");
_Static_assert(offsetof(struct ldt, call_gate) == (LDT_CALL_GATE & ~SEL_TI), "selector");

struct gdt {
	uint64_t null;
	uint64_t kernel_code;
	uint64_t kernel_data;
	uint64_t user_data;
	uint64_t user_code;
	struct system_descriptor tss;
	struct system_descriptor ldt;
} __packed;

_Static_assert(sizeof(struct gdt) == 72, "GDT layout");
_Static_assert(offsetof(struct gdt, kernel_code) == GDT_KERNEL_CODE, "selector");
_Static_assert(offsetof(struct gdt, kernel_data) == GDT_KERNEL_DATA, "selector");
_Static_assert(offsetof(struct gdt, user_data) == GDT_USER_DATA, "selector");
_Static_assert(offsetof(struct gdt, user_code) == GDT_USER_CODE, "selector");
_Static_assert(offsetof(struct gdt, tss) == GDT_TSS, "selector");
_Static_assert(offsetof(struct gdt, ldt) == GDT_LDT, "selector");

/* Operand of LGDT/LIDT. */
struct descriptor_table_register {
	uint16_t limit;
	uint64_t base;
} __packed;

_Static_assert(sizeof(struct descriptor_table_register) == 10, "GDTR/IDTR layout");

extern struct gdt kernel_gdt;
extern struct tss kernel_tss;
extern struct ldt kernel_ldt;

uint64_t segment_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags);
struct system_descriptor tss_descriptor(uint64_t base, uint32_t limit);
struct system_descriptor ldt_descriptor(uint64_t base, uint32_t limit);
/* Reassembles the base split across the descriptor. */
uint64_t system_descriptor_base(const struct system_descriptor *d);
struct call_gate64 call_gate64(uint16_t selector, uint64_t offset, unsigned dpl);
/* Reassembles the offset split across the gate. */
uint64_t call_gate64_offset(const struct call_gate64 *g);
/* Where LDT_CALL_GATE leads; nothing calls through it (the demo runs no user code). */
__noreturn void ldt_call_gate_target(void);

void gdt_init(void);
/* One CPU's GDT and TSS (RSP0, IST1 = #DF stack), then loading them on this CPU. */
void gdt_setup(struct gdt *gdt, struct tss *tss, uint64_t rsp0, uint64_t df_stack_top_va);
void gdt_load(struct gdt *gdt);

#endif
