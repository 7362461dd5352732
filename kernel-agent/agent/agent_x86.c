/*
 * The x86_64 hooks a host kernel can hand the agent as they are: the CPU
 * state only visible from ring 0 (control registers, EFER and IA32_PAT by
 * rdmsr, GDTR/IDTR/TR/LDTR), and interrupt masking for the stopped loop.
 */
#include "agent.h"

#define MSR_EFER 0xc0000080u
#define MSR_PAT 0x277u

/* The memory operand of sgdt/sidt. */
struct agent_x86_desc_ptr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

_Static_assert(sizeof(struct agent_x86_desc_ptr) == 10, "SGDT/SIDT operand is 10 bytes");

static uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;

	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}

#define READ_CR(n)                                                     \
	({                                                             \
		uint64_t v_;                                           \
		__asm__ volatile("mov %%cr" #n ", %0" : "=r"(v_));     \
		v_;                                                    \
	})

#define READ_SEG(name)                                                 \
	({                                                             \
		uint16_t v_;                                           \
		__asm__ volatile("mov %%" #name ", %0" : "=r"(v_));    \
		v_;                                                    \
	})

int agent_x86_read_cpu(void *ctx, struct agent_cpu *cpu)
{
	struct agent_x86_desc_ptr gdtr, idtr;
	uint32_t eax, ebx, ecx, edx;
	uint16_t tr, ldtr;

	(void)ctx;
	cpu->cr0 = READ_CR(0);
	cpu->cr2 = READ_CR(2);
	cpu->cr3 = READ_CR(3);
	cpu->cr4 = READ_CR(4);
	cpu->cr8 = READ_CR(8);
	cpu->efer = rdmsr(MSR_EFER);
	cpu->pat = rdmsr(MSR_PAT);
	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	__asm__ volatile("sidt %0" : "=m"(idtr));
	__asm__ volatile("str %0" : "=r"(tr));
	__asm__ volatile("sldt %0" : "=r"(ldtr));
	cpu->gdtr_base = gdtr.base;
	cpu->gdtr_limit = gdtr.limit;
	cpu->idtr_base = idtr.base;
	cpu->idtr_limit = idtr.limit;
	cpu->tr = tr;
	cpu->ldtr = ldtr;
	cpu->cs = READ_SEG(cs);
	cpu->ss = READ_SEG(ss);
	cpu->ds = READ_SEG(ds);
	cpu->es = READ_SEG(es);
	cpu->fs = READ_SEG(fs);
	cpu->gs = READ_SEG(gs);
	/* One instant, so that an unwinder finds the CFI of this RIP valid for this RSP/RBP. */
	__asm__ volatile("lea 0(%%rip), %0; mov %%rsp, %1; mov %%rbp, %2"
			 : "=r"(cpu->rip), "=r"(cpu->rsp), "=r"(cpu->rbp));
	__asm__ volatile("pushfq; popq %0" : "=r"(cpu->rflags));
	__asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0x80000000u), "c"(0));
	cpu->maxphyaddr = 36; /* the architectural default without leaf 80000008h */
	if (eax >= 0x80000008u) {
		__asm__ volatile("cpuid"
				 : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx)
				 : "a"(0x80000008u), "c"(0));
		cpu->maxphyaddr = (uint8_t)eax;
	}
	return AGENT_OK;
}

uint64_t agent_x86_irq_save(void *ctx)
{
	uint64_t flags;

	(void)ctx;
	__asm__ volatile("pushfq; popq %0; cli" : "=r"(flags) : : "memory");
	return flags;
}

void agent_x86_irq_restore(void *ctx, uint64_t flags)
{
	(void)ctx;
	if (flags & (1ULL << 9)) /* RFLAGS.IF */
		__asm__ volatile("sti" : : : "memory");
}

void agent_x86_relax(void *ctx)
{
	(void)ctx;
	__asm__ volatile("pause");
}
