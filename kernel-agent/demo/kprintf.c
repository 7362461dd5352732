#include "kprintf.h"
#include "serial.h"
#include "x86.h"

static void put_padded(const char *digits, int len, int width, char pad)
{
	for (; width > len; width--)
		serial_putc(pad);
	while (len--)
		serial_putc(digits[len]);
}

/* Digits are produced least significant first, put_padded reverses them. */
static void put_unsigned(uint64_t value, unsigned base, int width, char pad)
{
	char buf[24];
	int len = 0;

	do {
		buf[len++] = "0123456789abcdef"[value % base];
		value /= base;
	} while (value);
	put_padded(buf, len, width, pad);
}

static void vkprintf(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			if (*fmt == '\n')
				serial_putc('\r');
			serial_putc(*fmt);
			continue;
		}
		fmt++;
		char pad = ' ';
		int width = 0;
		int longs = 0;

		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		for (; *fmt >= '0' && *fmt <= '9'; fmt++)
			width = width * 10 + (*fmt - '0');
		for (; *fmt == 'l'; fmt++)
			longs++;

		uint64_t u;
		int64_t s;

		switch (*fmt) {
		case 'd':
			s = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
			if (s < 0) {
				serial_putc('-');
				u = -(uint64_t)s;
			} else {
				u = (uint64_t)s;
			}
			put_unsigned(u, 10, width, pad);
			break;
		case 'u':
		case 'x':
			u = longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);
			put_unsigned(u, *fmt == 'u' ? 10 : 16, width, pad);
			break;
		case 'p':
			serial_puts("0x");
			put_unsigned((uintptr_t)va_arg(ap, void *), 16, 16, '0');
			break;
		case 'c':
			serial_putc((char)va_arg(ap, int));
			break;
		case 's': {
			const char *str = va_arg(ap, const char *);

			serial_puts(str ? str : "(null)");
			break;
		}
		case '%':
			serial_putc('%');
			break;
		case '\0':
			return;
		default:
			serial_putc('%');
			serial_putc(*fmt);
			break;
		}
	}
}

void kprintf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vkprintf(fmt, ap);
	va_end(ap);
}

void panic(const char *fmt, ...)
{
	va_list ap;

	cli();
	serial_puts("kinspect-demo: PANIC: ");
	va_start(ap, fmt);
	vkprintf(fmt, ap);
	va_end(ap);
	serial_puts("\n");
	halt_forever();
}
