/* The local APIC, through the MMIO window (layout.h): IPIs, EOI, its timer. */
#ifndef DEMO_LAPIC_H
#define DEMO_LAPIC_H

#include "types.h"

#define LAPIC_PHYS 0xfee00000UL
#define LAPIC_ID 0x20
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_DIVIDE 0x3e0

#define LAPIC_SVR_ENABLE (1u << 8)
#define LAPIC_ICR_PENDING (1u << 12)	/* delivery status: send pending */
#define LAPIC_ICR_ASSERT (1u << 14)
#define LAPIC_ICR_INIT (5u << 8)
#define LAPIC_ICR_STARTUP (6u << 8)
#define LAPIC_ICR_ALL_BUT_SELF (3u << 18)	/* destination shorthand */
#define LAPIC_LVT_MASKED (1u << 16)
#define LAPIC_TIMER_PERIODIC (1u << 17)

uint32_t lapic_read(uint32_t reg);
void lapic_write(uint32_t reg, uint32_t value);
/* Enabled, the 8259 on LINT0 (ExtINT) as before, NMI on LINT1, timer masked. */
void lapic_virtual_wire(void);
/* Enabled with only its own timer (an AP: the 8259 is the BSP's). */
void lapic_enable(uint8_t spurious_vector);
uint32_t lapic_id(void);
/* Send an IPI (ICR low word) to one APIC ID; waits until the APIC took it. */
void lapic_send_ipi(uint32_t apic_id, uint32_t icr_low);
/* A fixed-vector IPI to every CPU but this one. */
void lapic_send_ipi_others(uint8_t vector);
void lapic_eoi(void);
void lapic_timer_periodic(uint8_t vector, uint32_t initial_count);

#endif
