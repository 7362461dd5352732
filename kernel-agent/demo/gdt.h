/* Kernel GDT with a 64-bit TSS (RSP0 and IST1 for #DF). */
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
/* System descriptor type: 64-bit TSS (available). */
#define SEG_TYPE_TSS64_AVAILABLE 0x9

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

/* The 16-byte system descriptor that holds the TSS base and limit. */
struct tss_descriptor {
	uint16_t limit_low; /* limit 15:0 */
	uint16_t base_low; /* base 15:0 */
	uint8_t base_mid; /* base 23:16 */
	uint8_t access; /* P, DPL, type */
	uint8_t limit_high_flags; /* limit 19:16, flags G/AVL */
	uint8_t base_high; /* base 31:24 */
	uint32_t base_upper; /* base 63:32 */
	uint32_t reserved;
} __packed;

_Static_assert(sizeof(struct tss_descriptor) == 16, "TSS descriptor layout");

struct gdt {
	uint64_t null;
	uint64_t kernel_code;
	uint64_t kernel_data;
	uint64_t user_data;
	uint64_t user_code;
	struct tss_descriptor tss;
} __packed;

_Static_assert(sizeof(struct gdt) == 56, "GDT layout");
_Static_assert(offsetof(struct gdt, kernel_code) == GDT_KERNEL_CODE, "selector");
_Static_assert(offsetof(struct gdt, kernel_data) == GDT_KERNEL_DATA, "selector");
_Static_assert(offsetof(struct gdt, user_data) == GDT_USER_DATA, "selector");
_Static_assert(offsetof(struct gdt, user_code) == GDT_USER_CODE, "selector");
_Static_assert(offsetof(struct gdt, tss) == GDT_TSS, "selector");

/* Operand of LGDT/LIDT. */
struct descriptor_table_register {
	uint16_t limit;
	uint64_t base;
} __packed;

_Static_assert(sizeof(struct descriptor_table_register) == 10, "GDTR/IDTR layout");

extern struct gdt kernel_gdt;
extern struct tss kernel_tss;

uint64_t segment_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags);
struct tss_descriptor tss_descriptor(uint64_t base, uint32_t limit);
/* Reassembles the base split across the descriptor. */
uint64_t tss_descriptor_base(const struct tss_descriptor *d);

void gdt_init(void);

#endif
