/* The demo kernel's port of the kinspect agent to COM1 (agent_port.c). */
#ifndef DEMO_AGENT_PORT_H
#define DEMO_AGENT_PORT_H

void demo_agent_init(void);
/* Serves every request waiting on COM1; called from the idle loop. */
void demo_agent_poll(void);

#endif
