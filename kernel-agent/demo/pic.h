/* 8259 PIC pair (remapped to vectors 32-47) and the 8254 PIT on IRQ0. */
#ifndef DEMO_PIC_H
#define DEMO_PIC_H

#include "types.h"

#define PIT_HZ 100

/* Incremented by the IRQ0 handler, PIT_HZ times a second. */
extern volatile uint64_t demo_ticks;

/* Remaps both PICs to vectors 32-47 and masks every line. */
void pic_init(void);
void pic_unmask(unsigned irq);
/* Programs PIT channel 0 as a rate generator and unmasks IRQ0. */
void pit_init(unsigned hz);
/* Called by the interrupt dispatcher for vectors 32-47. */
void pic_irq(unsigned irq);

#endif
