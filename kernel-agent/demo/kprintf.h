/* Minimal formatted output to COM1. */
#ifndef DEMO_KPRINTF_H
#define DEMO_KPRINTF_H

#include "types.h"

/*
 * Supports %s %c %d %u %x %p %%, the length modifiers l and ll, a field
 * width and the 0 flag. Newlines go out as CRLF.
 */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
__noreturn void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
