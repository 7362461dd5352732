#include "gdt.h"
#include "kprintf.h"

extern char boot_stack_top[];
extern char df_stack_top[];

struct gdt kernel_gdt __aligned(16);
struct tss kernel_tss __aligned(16);
/* A page of its own (linker.ld.S), so a test can tell its protection from the TSS's. */
struct ldt kernel_ldt __aligned(16) __section(".bss.ldt");

uint64_t segment_descriptor(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
	return ((uint64_t)(limit & 0xffff) << 0) |
	       ((uint64_t)(base & 0xffffff) << 16) |
	       ((uint64_t)access << 40) |
	       ((uint64_t)((limit >> 16) & 0xf) << 48) |
	       ((uint64_t)(flags & 0xf) << 52) |
	       ((uint64_t)((base >> 24) & 0xff) << 56);
}

static struct system_descriptor make_system_descriptor(uint64_t base, uint32_t limit, uint8_t type)
{
	struct system_descriptor d = {
		.limit_low = (uint16_t)(limit & 0xffff),
		.base_low = (uint16_t)(base & 0xffff),
		.base_mid = (uint8_t)((base >> 16) & 0xff),
		.access = SEG_P | SEG_DPL(0) | type,
		.limit_high_flags = (uint8_t)((limit >> 16) & 0xf),
		.base_high = (uint8_t)((base >> 24) & 0xff),
		.base_upper = (uint32_t)(base >> 32),
		.reserved = 0,
	};

	return d;
}

struct system_descriptor tss_descriptor(uint64_t base, uint32_t limit)
{
	return make_system_descriptor(base, limit, SEG_TYPE_TSS64_AVAILABLE);
}

struct system_descriptor ldt_descriptor(uint64_t base, uint32_t limit)
{
	return make_system_descriptor(base, limit, SEG_TYPE_LDT);
}

uint64_t system_descriptor_base(const struct system_descriptor *d)
{
	return (uint64_t)d->base_low |
	       ((uint64_t)d->base_mid << 16) |
	       ((uint64_t)d->base_high << 24) |
	       ((uint64_t)d->base_upper << 32);
}

struct call_gate64 call_gate64(uint16_t selector, uint64_t offset, unsigned dpl)
{
	struct call_gate64 g = {
		.offset_low = (uint16_t)(offset & 0xffff),
		.selector = selector,
		.reserved0 = 0,
		.access = SEG_P | SEG_DPL(dpl) | SEG_TYPE_CALL_GATE64,
		.offset_mid = (uint16_t)((offset >> 16) & 0xffff),
		.offset_high = (uint32_t)(offset >> 32),
		.reserved1 = 0,
	};

	return g;
}

uint64_t call_gate64_offset(const struct call_gate64 *g)
{
	return (uint64_t)g->offset_low |
	       ((uint64_t)g->offset_mid << 16) |
	       ((uint64_t)g->offset_high << 32);
}

void ldt_call_gate_target(void)
{
	panic("gdt: entered through the LDT call gate");
}

/* LGDT, then reload CS with a far return and the data segments with movs. */
static void load_gdt(const struct descriptor_table_register *gdtr)
{
	__asm__ volatile("lgdt %0\n\t"
			 "pushq %1\n\t"
			 "leaq 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:\n\t"
			 "movl %2, %%eax\n\t"
			 "movl %%eax, %%ds\n\t"
			 "movl %%eax, %%es\n\t"
			 "movl %%eax, %%ss\n\t"
			 "xorl %%eax, %%eax\n\t"
			 "movl %%eax, %%fs\n\t"
			 "movl %%eax, %%gs\n\t"
			 :
			 : "m"(*gdtr), "i"(GDT_KERNEL_CODE), "i"(GDT_KERNEL_DATA)
			 : "rax", "memory");
}

/*
 * One CPU's GDT and TSS: the same segments on every CPU, a TSS of its own
 * (RSP0, IST1 for #DF) and the shared LDT. gdt_init() does the BSP's
 * (kernel_gdt, kernel_tss); smp.c each AP's.
 */
void gdt_setup(struct gdt *gdt, struct tss *tss, uint64_t rsp0, uint64_t df_stack_top_va)
{
	const uint8_t code = SEG_P | SEG_S | SEG_E | SEG_RW | SEG_A;
	const uint8_t data = SEG_P | SEG_S | SEG_RW | SEG_A;
	uint64_t tss_base = (uint64_t)tss;
	uint64_t ldt_base = (uint64_t)&kernel_ldt;

	tss->rsp[0] = rsp0;
	tss->ist[IST_DOUBLE_FAULT - 1] = df_stack_top_va;
	/* An I/O map base at or past the limit means no I/O permission bitmap. */
	tss->iomap_base = sizeof(struct tss);

	gdt->null = 0;
	gdt->kernel_code = segment_descriptor(0, 0xfffff, code | SEG_DPL(0),
					      SEG_FLAG_G | SEG_FLAG_L);
	gdt->kernel_data = segment_descriptor(0, 0xfffff, data | SEG_DPL(0),
					      SEG_FLAG_G | SEG_FLAG_DB);
	gdt->user_data = segment_descriptor(0, 0xfffff, data | SEG_DPL(3),
					    SEG_FLAG_G | SEG_FLAG_DB);
	gdt->user_code = segment_descriptor(0, 0xfffff, code | SEG_DPL(3),
					    SEG_FLAG_G | SEG_FLAG_L);
	gdt->tss = tss_descriptor(tss_base, sizeof(struct tss) - 1);
	gdt->ldt = ldt_descriptor(ldt_base, sizeof(struct ldt) - 1);

	if (system_descriptor_base(&gdt->tss) != tss_base)
		panic("gdt: TSS base 0x%lx reassembles as 0x%lx", tss_base,
		      system_descriptor_base(&gdt->tss));
	if (system_descriptor_base(&gdt->ldt) != ldt_base)
		panic("gdt: LDT base 0x%lx reassembles as 0x%lx", ldt_base,
		      system_descriptor_base(&gdt->ldt));
}

/* LGDT (CS and the data segments reloaded), LTR and LLDT on this CPU. */
void gdt_load(struct gdt *gdt)
{
	struct descriptor_table_register gdtr = {
		.limit = sizeof(*gdt) - 1,
		.base = (uint64_t)gdt,
	};

	load_gdt(&gdtr);
	__asm__ volatile("ltr %w0" : : "r"((uint16_t)GDT_TSS) : "memory");
	__asm__ volatile("lldt %w0" : : "r"((uint16_t)GDT_LDT) : "memory");
}

void gdt_init(void)
{
	const uint8_t code = SEG_P | SEG_S | SEG_E | SEG_RW | SEG_A;
	const uint8_t data = SEG_P | SEG_S | SEG_RW | SEG_A;

	kernel_ldt.user_code32 = segment_descriptor(0, 0xfffff, (code & ~SEG_A) | SEG_DPL(3),
						    SEG_FLAG_G | SEG_FLAG_DB);
	kernel_ldt.user_data = segment_descriptor(LDT_USER_DATA_BASE, LDT_USER_DATA_LIMIT,
						  (data & ~SEG_A) | SEG_DPL(3), SEG_FLAG_DB);
	kernel_ldt.not_present = segment_descriptor(0, 0xfff, (data & ~(SEG_A | SEG_P)) | SEG_DPL(3),
						    0);
	kernel_ldt.call_gate = call_gate64(GDT_KERNEL_CODE, (uint64_t)ldt_call_gate_target, 3);
	if (call_gate64_offset(&kernel_ldt.call_gate) != (uint64_t)ldt_call_gate_target)
		panic("gdt: call gate offset 0x%lx reassembles as 0x%lx",
		      (uint64_t)ldt_call_gate_target, call_gate64_offset(&kernel_ldt.call_gate));

	gdt_setup(&kernel_gdt, &kernel_tss, (uint64_t)boot_stack_top, (uint64_t)df_stack_top);
	gdt_load(&kernel_gdt);
}
