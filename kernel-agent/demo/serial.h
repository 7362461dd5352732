/*
 * Polled 16550 UART on COM1. The later serial agent reads and writes the
 * port through these calls, so they are byte-oriented and never block on
 * input.
 */
#ifndef DEMO_SERIAL_H
#define DEMO_SERIAL_H

#include "types.h"

#define COM1_PORT 0x3f8

void serial_init(void);
void serial_putc(char c);
void serial_write(const void *buf, size_t len);
void serial_puts(const char *s);
/* Returns the next received byte, or -1 if none is waiting. */
int serial_try_getc(void);

#endif
