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

/* -- remaps ------------------------------------------------------------------ */

#define CR4_PGE (1ULL << 7)

void agent_x86_flush_tlb(void *ctx, uint64_t va, bool all)
{
	(void)ctx;
	if (!all) {
		/* Also drops every paging-structure cache entry (SDM 4.10.4.1). */
		__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
		return;
	}
	uint64_t cr4 = READ_CR(4);

	if (cr4 & CR4_PGE) {
		/* Clearing CR4.PGE flushes everything, global entries included. */
		__asm__ volatile("mov %0, %%cr4; mov %1, %%cr4"
				 : : "r"(cr4 & ~CR4_PGE), "r"(cr4) : "memory");
	} else {
		__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" : : : "rax", "memory");
	}
}

/*
 * void agent_x86_rebase_stack(int64_t delta, uint64_t lo, uint64_t hi)
 *
 * Moves the caller onto another alias of the same stack: every saved frame
 * pointer in the chain that lies in [lo, hi) gets delta added (in memory,
 * which is the same memory through both aliases), then RBP and RSP. The
 * return addresses are code addresses and stay. Frames above return through
 * the new addresses; pointers to stack objects kept elsewhere still point at
 * the old alias, which must stay mapped until they are gone (the caller
 * returns to its idle loop before the old alias is unmapped).
 */
__asm__(".text\n"
	".globl agent_x86_rebase_stack\n"
	".type agent_x86_rebase_stack, @function\n"
	"agent_x86_rebase_stack:\n"
	"	mov %rbp, %rax\n"
	"1:	cmp %rsi, %rax\n"
	"	jb 3f\n"
	"	cmp %rdx, %rax\n"
	"	jae 3f\n"
	"	mov (%rax), %rcx\n" /* the caller's saved RBP */
	"	cmp %rax, %rcx\n"
	"	jbe 3f\n" /* frames go up: anything else ends the chain */
	"	cmp %rdx, %rcx\n"
	"	jae 3f\n"
	"	lea (%rcx,%rdi), %r8\n"
	"	mov %r8, (%rax)\n"
	"	mov %rcx, %rax\n"
	"	jmp 1b\n"
	"3:	cmp %rsi, %rbp\n"
	"	jb 4f\n"
	"	cmp %rdx, %rbp\n"
	"	jae 4f\n"
	"	add %rdi, %rbp\n"
	"4:	add %rdi, %rsp\n"
	"	ret\n"
	".size agent_x86_rebase_stack, . - agent_x86_rebase_stack\n");

int agent_x86_load_descriptors(void *ctx, uint64_t gdt_base, uint64_t idt_base, uint64_t tss_base)
{
	struct agent_x86_desc_ptr gdtr, idtr;
	uint16_t tr;
	uint64_t cs = READ_SEG(cs), ss = READ_SEG(ss), ds = READ_SEG(ds), es = READ_SEG(es);

	(void)ctx;
	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	__asm__ volatile("sidt %0" : "=m"(idtr));
	__asm__ volatile("str %0" : "=r"(tr));
	gdtr.base = gdt_base;
	idtr.base = idt_base;
	__asm__ volatile("lgdt %0" : : "m"(gdtr) : "memory");
	/* Long mode has no far jump to a new CS: push CS and RIP, far-return. */
	__asm__ volatile("pushq %0\n\t"
			 "leaq 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:"
			 : : "r"(cs) : "rax", "memory");
	__asm__ volatile("mov %0, %%ss; mov %1, %%ds; mov %2, %%es"
			 : : "r"(ss), "r"(ds), "r"(es) : "memory");
	__asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
	if (tr & ~7) {
		volatile uint8_t *d = (volatile uint8_t *)(gdt_base + (tr & ~7u));

		d[2] = (uint8_t)tss_base;
		d[3] = (uint8_t)(tss_base >> 8);
		d[4] = (uint8_t)(tss_base >> 16);
		d[7] = (uint8_t)(tss_base >> 24);
		d[8] = (uint8_t)(tss_base >> 32);
		d[9] = (uint8_t)(tss_base >> 40);
		d[10] = (uint8_t)(tss_base >> 48);
		d[11] = (uint8_t)(tss_base >> 56);
		/* ltr takes only an available TSS: type 1001b, not busy 1011b. */
		d[5] = (uint8_t)((d[5] & 0xf0) | 0x9);
		__asm__ volatile("ltr %0" : : "r"(tr) : "memory");
	}
	return AGENT_OK;
}

int agent_x86_write_cr3(void *ctx, uint64_t cr3)
{
	(void)ctx;
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
	return AGENT_OK;
}

/* -- UEFI runtime services ------------------------------------------------------ */

/*
 * uint64_t agent_x86_efi_call(void *ctx, uint64_t fn, const uint64_t args[5])
 *
 * Calls a UEFI service with the MS x64 ABI (UEFI 2.10, 2.3.4.2): args[0..3]
 * in RCX, RDX, R8, R9, args[4] on the stack above the 32 bytes of shadow
 * space the callee may use, RSP 16-byte aligned at the call, DF clear. The
 * kernel is built with its own stack alignment (-mno-sse), so the stack is
 * aligned here rather than trusted. The callee keeps RBX, RBP, RDI, RSI and
 * R12-R15 (and XMM6-15; the kernel keeps nothing in XMM registers). The
 * firmware's code may use SSE: the host needs CR4.OSFXSR set and CR0.EM and
 * CR0.TS clear.
 */
__asm__(".text\n"
	".globl agent_x86_efi_call\n"
	".type agent_x86_efi_call, @function\n"
	"agent_x86_efi_call:\n"
	"	push %rbp\n"
	"	mov %rsp, %rbp\n"
	"	sub $48, %rsp\n" /* shadow space, the fifth argument, padding */
	"	and $-16, %rsp\n"
	"	mov %rsi, %rax\n"
	"	mov 32(%rdx), %r10\n"
	"	mov %r10, 32(%rsp)\n"
	"	mov (%rdx), %rcx\n"
	"	mov 16(%rdx), %r8\n"
	"	mov 24(%rdx), %r9\n"
	"	mov 8(%rdx), %rdx\n"
	"	cld\n"
	"	call *%rax\n"
	"	mov %rbp, %rsp\n"
	"	pop %rbp\n"
	"	ret\n"
	".size agent_x86_efi_call, . - agent_x86_efi_call\n");
