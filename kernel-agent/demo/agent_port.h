/* The demo kernel's port of the kinspect agent to COM1 (agent_port.c). */
#ifndef DEMO_AGENT_PORT_H
#define DEMO_AGENT_PORT_H

#include "types.h"

/*
 * shootdown: give the agent the TLB shootdown hook when other CPUs are
 * online (the boot option "noshootdown" leaves it out: remaps are then
 * refused with no-shootdown).
 */
void demo_agent_init(bool shootdown);
/* Serves every request waiting on COM1; called from the idle loop. */
void demo_agent_poll(void);

#endif
