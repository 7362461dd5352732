/* COM1 16550 UART: 115200 baud, 8N1, FIFOs on, polled. */
#include "serial.h"
#include "x86.h"

/* Register offsets from the base port (DLAB=0 unless noted). */
#define UART_RBR 0 /* receive buffer (read) */
#define UART_THR 0 /* transmit holding (write) */
#define UART_DLL 0 /* divisor latch low (DLAB=1) */
#define UART_IER 1 /* interrupt enable */
#define UART_DLM 1 /* divisor latch high (DLAB=1) */
#define UART_FCR 2 /* FIFO control (write) */
#define UART_LCR 3 /* line control */
#define UART_MCR 4 /* modem control */
#define UART_LSR 5 /* line status */

#define LCR_8N1 0x03
#define LCR_DLAB 0x80
#define FCR_ENABLE_CLEAR_14 0xc7 /* enable, clear RX/TX, 14-byte trigger */
#define MCR_DTR_RTS_OUT2 0x0b
#define LSR_DR 0x01 /* data ready */
#define LSR_THRE 0x20 /* transmit holding register empty */

#define UART_CLOCK 115200
#define UART_BAUD 115200

void serial_init(void)
{
	uint16_t divisor = UART_CLOCK / UART_BAUD;

	outb(COM1_PORT + UART_IER, 0x00);
	outb(COM1_PORT + UART_LCR, LCR_DLAB);
	outb(COM1_PORT + UART_DLL, divisor & 0xff);
	outb(COM1_PORT + UART_DLM, divisor >> 8);
	outb(COM1_PORT + UART_LCR, LCR_8N1);
	outb(COM1_PORT + UART_FCR, FCR_ENABLE_CLEAR_14);
	outb(COM1_PORT + UART_MCR, MCR_DTR_RTS_OUT2);
}

void serial_putc(char c)
{
	while (!(inb(COM1_PORT + UART_LSR) & LSR_THRE))
		;
	outb(COM1_PORT + UART_THR, (uint8_t)c);
}

void serial_write(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		serial_putc((char)p[i]);
}

void serial_puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			serial_putc('\r');
		serial_putc(*s);
	}
}

int serial_try_getc(void)
{
	if (!(inb(COM1_PORT + UART_LSR) & LSR_DR))
		return -1;
	return inb(COM1_PORT + UART_RBR);
}
