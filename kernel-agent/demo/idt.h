/* IDT: exception vectors 0-31, 8259 IRQs at 32-47. */
#ifndef DEMO_IDT_H
#define DEMO_IDT_H

#include "types.h"

#define IDT_ENTRIES 256
#define IDT_STUBS 48 /* vectors with a stub in isr.S */
#define IRQ_BASE_VECTOR 32

#define IDT_TYPE_INTERRUPT_GATE 0xe
#define IDT_P (1U << 7)
#define IDT_DPL(n) ((unsigned)(n) << 5)

struct idt_entry {
	uint16_t offset_low; /* offset 15:0 */
	uint16_t selector;
	uint8_t ist; /* bits 2:0 */
	uint8_t type_attr; /* P, DPL, gate type */
	uint16_t offset_mid; /* offset 31:16 */
	uint32_t offset_high; /* offset 63:32 */
	uint32_t reserved;
} __packed;

_Static_assert(sizeof(struct idt_entry) == 16, "IDT gate descriptor layout");

/* The frame isr.S builds; the lowest address (last pushed) comes first. */
struct interrupt_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector;
	uint64_t error_code;
	/* Pushed by the CPU. */
	uint64_t rip, cs, rflags, rsp, ss;
};

_Static_assert(sizeof(struct interrupt_frame) == 22 * 8, "isr.S frame layout");

extern struct idt_entry kernel_idt[IDT_ENTRIES];

struct idt_entry idt_gate(uint64_t handler, uint16_t selector, uint8_t ist, uint8_t dpl);
/* Reassembles the handler offset split across the gate. */
uint64_t idt_entry_offset(const struct idt_entry *e);

void idt_init(void);
/* LIDT kernel_idt on this CPU (the APs share the BSP's IDT). */
void idt_load(void);
void interrupt_dispatch(struct interrupt_frame *frame);

#endif
