#include "lapic.h"
#include "layout.h"
#include "x86.h"

static volatile uint32_t *lapic_register(uint32_t reg)
{
	return (volatile uint32_t *)(MMIO_WINDOW_BASE + (LAPIC_PHYS - MMIO_PHYS) + reg);
}

uint32_t lapic_read(uint32_t reg)
{
	return *lapic_register(reg);
}

void lapic_write(uint32_t reg, uint32_t value)
{
	*lapic_register(reg) = value;
}

void lapic_virtual_wire(void)
{
	lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT0, 7u << 8);	/* ExtINT: the 8259 */
	lapic_write(LAPIC_LVT_LINT1, 4u << 8);	/* NMI */
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | 0x27); /* spurious vector 39 (IRQ 7) */
}

void lapic_enable(uint8_t spurious_vector)
{
	lapic_write(LAPIC_LVT_TIMER, LAPIC_LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT0, LAPIC_LVT_MASKED);
	lapic_write(LAPIC_LVT_LINT1, 4u << 8);	/* NMI */
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | spurious_vector);
}

uint32_t lapic_id(void)
{
	return lapic_read(LAPIC_ID) >> 24;
}

void lapic_send_ipi(uint32_t apic_id, uint32_t icr_low)
{
	lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
	lapic_write(LAPIC_ICR_LOW, icr_low);
	while (lapic_read(LAPIC_ICR_LOW) & LAPIC_ICR_PENDING)
		__asm__ volatile("pause");
}

void lapic_send_ipi_others(uint8_t vector)
{
	lapic_write(LAPIC_ICR_HIGH, 0);
	lapic_write(LAPIC_ICR_LOW, LAPIC_ICR_ALL_BUT_SELF | LAPIC_ICR_ASSERT | vector);
	while (lapic_read(LAPIC_ICR_LOW) & LAPIC_ICR_PENDING)
		__asm__ volatile("pause");
}

void lapic_eoi(void)
{
	lapic_write(LAPIC_EOI, 0);
}

void lapic_timer_periodic(uint8_t vector, uint32_t initial_count)
{
	lapic_write(LAPIC_TIMER_DIVIDE, 0x3);	/* divide by 16 */
	lapic_write(LAPIC_LVT_TIMER, LAPIC_TIMER_PERIODIC | vector);
	lapic_write(LAPIC_TIMER_INITIAL, initial_count);
}
