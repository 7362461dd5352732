/*
 * A known call chain for debugger tests: a breakpoint on demo_level3 shows
 * demo_level3 <- demo_level2 <- demo_level1 <- demo_work <- kernel_main.
 */
#ifndef DEMO_WORK_H
#define DEMO_WORK_H

#include "types.h"

/* Updated by every call of the chain; volatile so no call can vanish. */
extern volatile uint64_t demo_state;
extern volatile uint64_t demo_work_calls;

uint64_t demo_work(uint64_t ticks);
uint64_t demo_level1(uint64_t x);
uint64_t demo_level2(uint64_t x);
uint64_t demo_level3(uint64_t x);

#endif
