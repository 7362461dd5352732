/*
 * Faults on purpose (fault_demo.h). Each class faults at an instruction with
 * a global label, so a test can set a breakpoint on the IDT's stub, compare
 * the faulting RIP with a symbol and CR2 with another. Interrupts are still
 * off (kernel_main enables them in its idle loop only), so QEMU's log of
 * delivered exceptions holds the fault and nothing else, but for
 * seed-lowgdt, whose first timer interrupt is what brings the machine down.
 */
#include "fault_demo.h"
#include "gdt.h"
#include "idt.h"
#include "kprintf.h"
#include "layout.h"
#include "paging.h"
#include "x86.h"

#define FAULT_FN __attribute__((noinline, noclone))

extern char boot_stack_guard[];

const char *const fault_demo_options[FAULT_DEMO_COUNT] = {
	[FAULT_PF_NOTPRESENT] = "fault=pf-notpresent",
	[FAULT_PF_WRITE_RO] = "fault=pf-write-ro",
	[FAULT_PF_NX] = "fault=pf-nx",
	[FAULT_PF_USER] = "fault=pf-user",
	[FAULT_GP_SELECTOR] = "fault=gp-selector",
	[FAULT_DF_STACK] = "fault=df-stack",
	[FAULT_TRIPLE_IDT] = "fault=triple-idt",
	[FAULT_SEED_LOWGDT] = "fault=seed-lowgdt",
	[FAULT_TRIPLE_DF_GATE] = "fault=triple-df-gate",
};

/* In .rodata: mapped P G NX, without RW. */
const uint64_t fault_demo_readonly = 0x5eed;
/* In .data: RW NX. A `ret`, which never runs. */
uint8_t fault_demo_nx_code[16] __aligned(16) = { 0xc3 };
/* In .data, supervisor only: what the ring-3 code of pf-user reads. */
volatile uint64_t fault_demo_secret = 0x5ec2e7;
/* The page mapped at FAULT_USER_VA (US at every level, read and execute). */
static uint8_t fault_user_page[PAGE_SIZE] __aligned(PAGE_SIZE);
volatile uint64_t fault_demo_depth;

static void say(enum fault_demo which, const char *what)
{
	kprintf("kinspect-demo: %s: %s\n", fault_demo_options[which], what);
}

FAULT_FN static void pf_notpresent(void)
{
	uint64_t p = 0;

	__asm__ volatile(".globl fault_pf_notpresent_insn\n"
			 "fault_pf_notpresent_insn:\n\t"
			 "movq 0x10(%0), %0"
			 : "+r"(p)
			 :
			 : "memory");
}

FAULT_FN static void pf_write_ro(void)
{
	__asm__ volatile(".globl fault_pf_write_ro_insn\n"
			 "fault_pf_write_ro_insn:\n\t"
			 "movq %1, (%0)"
			 :
			 : "r"(&fault_demo_readonly), "r"(1UL)
			 : "memory");
}

FAULT_FN static void pf_nx(void)
{
	/* The fetch faults at the target: RIP = CR2 = fault_demo_nx_code. */
	__asm__ volatile(".globl fault_pf_nx_insn\n"
			 "fault_pf_nx_insn:\n\t"
			 "call *%0"
			 :
			 : "r"(fault_demo_nx_code)
			 : "memory");
}

FAULT_FN static void pf_user(void)
{
	uint64_t secret = (uint64_t)&fault_demo_secret;
	unsigned i = 0;

	/* movabs fault_demo_secret, %rax; jmp . */
	fault_user_page[i++] = 0x48;
	fault_user_page[i++] = 0xa1;
	for (unsigned b = 0; b < 8; b++)
		fault_user_page[i++] = (uint8_t)(secret >> (8 * b));
	fault_user_page[i++] = 0xeb;
	fault_user_page[i++] = 0xfe;
	paging_map_user_page(FAULT_USER_VA, (uint64_t)fault_user_page - KERNEL_VMA);
	/* IRETQ to CPL 3: SS, RSP, RFLAGS (IF clear), CS, RIP. #PF comes back on TSS.RSP0. */
	__asm__ volatile("pushq %0\n\t"
			 "pushq %1\n\t"
			 "pushq $0x2\n\t"
			 "pushq %2\n\t"
			 "pushq %3\n\t"
			 ".globl fault_pf_user_iretq\n"
			 "fault_pf_user_iretq:\n\t"
			 "iretq"
			 :
			 : "i"(GDT_USER_DATA | 3), "r"(FAULT_USER_VA + PAGE_SIZE),
			   "i"(GDT_USER_CODE | 3), "r"(FAULT_USER_VA)
			 : "memory");
}

FAULT_FN static void gp_selector(void)
{
	/* A TSS descriptor is no data segment: #GP with the selector as error code. */
	__asm__ volatile("movl %0, %%eax\n\t"
			 ".globl fault_gp_selector_insn\n"
			 "fault_gp_selector_insn:\n\t"
			 "movl %%eax, %%ds"
			 :
			 : "i"(GDT_TSS)
			 : "rax", "memory");
}

FAULT_FN uint64_t fault_demo_recurse(uint64_t n)
{
	volatile uint64_t pad[30];

	pad[0] = n;
	fault_demo_depth = n;
	if (n == ~0UL)
		return pad[0];
	return fault_demo_recurse(n + 1) + pad[0];
}

FAULT_FN static void triple_idt(void)
{
	struct descriptor_table_register idtr = {
		.limit = sizeof(kernel_idt) - 1,
		.base = (uint64_t)boot_stack_guard,
	};

	__asm__ volatile("lidt %0\n\t"
			 ".globl fault_triple_idt_insn\n"
			 "fault_triple_idt_insn:\n\t"
			 "ud2"
			 :
			 : "m"(idtr)
			 : "memory");
}

FAULT_FN static void seed_lowgdt(void)
{
	struct descriptor_table_register gdtr = {
		.limit = sizeof(kernel_gdt) - 1,
		.base = (uint64_t)&kernel_gdt - KERNEL_VMA,
	};

	/* Segment caches keep their descriptors: nothing reads the GDT until an event. */
	__asm__ volatile("lgdt %0" : : "m"(gdtr) : "memory");
	paging_drop_identity();
	kprintf("kinspect-demo: fault=seed-lowgdt: identity map dropped, GDTR.base=0x%lx; "
		"enabling interrupts\n",
		gdtr.base);
	for (;;)
		__asm__ volatile(".globl fault_seed_lowgdt_hlt\n"
				 "sti\n"
				 "fault_seed_lowgdt_hlt:\n\t"
				 "hlt"
				 :
				 :
				 : "memory");
}

void fault_demo_run(enum fault_demo which)
{
	switch (which) {
	case FAULT_PF_NOTPRESENT:
		say(which, "reading NULL+0x10 (page 0 is not mapped)");
		pf_notpresent();
		break;
	case FAULT_PF_WRITE_RO:
		say(which, "writing fault_demo_readonly in .rodata (CR0.WP set)");
		pf_write_ro();
		break;
	case FAULT_PF_NX:
		say(which, "calling fault_demo_nx_code in .data (NX)");
		pf_nx();
		break;
	case FAULT_PF_USER:
		say(which, "ring 3 at 0x7f0000000000 reads fault_demo_secret (supervisor)");
		pf_user();
		break;
	case FAULT_GP_SELECTOR:
		say(which, "loading the TSS selector 0x28 into DS");
		gp_selector();
		break;
	case FAULT_DF_STACK:
		say(which, "recursing until the boot stack runs into boot_stack_guard");
		fault_demo_recurse(0);
		break;
	case FAULT_TRIPLE_IDT:
		say(which, "IDTR.base on boot_stack_guard (not mapped), then ud2");
		triple_idt();
		break;
	case FAULT_SEED_LOWGDT:
		say(which, "GDTR at the physical address of kernel_gdt, then the identity map dropped");
		seed_lowgdt();
		break;
	case FAULT_TRIPLE_DF_GATE:
		kernel_idt[8].type_attr &= (uint8_t)~IDT_P;
		say(which, "IDT gate 8 (#DF) cleared (P=0), then the boot stack overflows");
		fault_demo_recurse(0);
		break;
	case FAULT_DEMO_COUNT:
		break;
	}
	kprintf("kinspect-demo: fault: the fault did not happen\n");
}
