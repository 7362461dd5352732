#include "pic.h"
#include "x86.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1

#define ICW1_ICW4 0x01 /* ICW4 follows */
#define ICW1_INIT 0x10
#define ICW4_8086 0x01
#define OCW2_EOI 0x20
#define OCW3_READ_ISR 0x0b

#define PIC_CASCADE_IRQ 2

#define PIT_CH0_DATA 0x40
#define PIT_CMD 0x43
#define PIT_CMD_CH0_LOHI_RATE 0x34 /* channel 0, lobyte/hibyte, mode 2 */
#define PIT_BASE_HZ 1193182

volatile uint64_t demo_ticks;

void pic_init(void)
{
	outb(PIC1_CMD, ICW1_INIT | ICW1_ICW4);
	io_wait();
	outb(PIC2_CMD, ICW1_INIT | ICW1_ICW4);
	io_wait();
	outb(PIC1_DATA, 32); /* ICW2: master vector base */
	io_wait();
	outb(PIC2_DATA, 40); /* ICW2: slave vector base */
	io_wait();
	outb(PIC1_DATA, 1 << PIC_CASCADE_IRQ); /* ICW3: slave on IRQ2 */
	io_wait();
	outb(PIC2_DATA, PIC_CASCADE_IRQ); /* ICW3: cascade identity */
	io_wait();
	outb(PIC1_DATA, ICW4_8086);
	io_wait();
	outb(PIC2_DATA, ICW4_8086);
	io_wait();
	outb(PIC1_DATA, 0xff);
	outb(PIC2_DATA, 0xff);
}

void pic_unmask(unsigned irq)
{
	uint16_t port = irq < 8 ? PIC1_DATA : PIC2_DATA;

	outb(port, inb(port) & ~(1U << (irq & 7)));
	if (irq >= 8)
		outb(PIC1_DATA, inb(PIC1_DATA) & ~(1U << PIC_CASCADE_IRQ));
}

void pit_init(unsigned hz)
{
	uint32_t divisor = (PIT_BASE_HZ + hz / 2) / hz;

	outb(PIT_CMD, PIT_CMD_CH0_LOHI_RATE);
	outb(PIT_CH0_DATA, divisor & 0xff);
	outb(PIT_CH0_DATA, (divisor >> 8) & 0xff);
	pic_unmask(0);
}

static uint8_t pic_in_service(uint16_t cmd_port)
{
	outb(cmd_port, OCW3_READ_ISR);
	return inb(cmd_port);
}

void pic_irq(unsigned irq)
{
	/*
	 * IRQ7/IRQ15 with no in-service bit are spurious: no EOI to the PIC
	 * that raised them (but the master still saw IRQ2 for a slave one).
	 */
	if (irq == 7 && !(pic_in_service(PIC1_CMD) & 0x80))
		return;
	if (irq == 15 && !(pic_in_service(PIC2_CMD) & 0x80)) {
		outb(PIC1_CMD, OCW2_EOI);
		return;
	}

	if (irq == 0)
		demo_ticks++;

	if (irq >= 8)
		outb(PIC2_CMD, OCW2_EOI);
	outb(PIC1_CMD, OCW2_EOI);
}
