#include "idt.h"
#include "gdt.h"
#include "kprintf.h"
#include "lapic.h"
#include "layout.h"
#include "pic.h"
#include "smp.h"
#include "trap_demo.h"
#include "x86.h"

extern const uint64_t isr_stub_table[IDT_STUBS];
extern char isr_stub_240[], isr_stub_241[], isr_stub_242[], isr_stub_255[];

struct idt_entry kernel_idt[IDT_ENTRIES] __aligned(16);

static const char *const exception_names[32] = {
	"#DE divide error",
	"#DB debug",
	"NMI",
	"#BP breakpoint",
	"#OF overflow",
	"#BR bound range",
	"#UD invalid opcode",
	"#NM device not available",
	"#DF double fault",
	"coprocessor segment overrun",
	"#TS invalid TSS",
	"#NP segment not present",
	"#SS stack-segment fault",
	"#GP general protection",
	"#PF page fault",
	"reserved (15)",
	"#MF x87 floating-point",
	"#AC alignment check",
	"#MC machine check",
	"#XM SIMD floating-point",
	"#VE virtualization",
	"#CP control protection",
	"reserved (22)",
	"reserved (23)",
	"reserved (24)",
	"reserved (25)",
	"reserved (26)",
	"reserved (27)",
	"#HV hypervisor injection",
	"#VC VMM communication",
	"#SX security",
	"reserved (31)",
};

struct idt_entry idt_gate(uint64_t handler, uint16_t selector, uint8_t ist, uint8_t dpl)
{
	struct idt_entry e = {
		.offset_low = (uint16_t)(handler & 0xffff),
		.selector = selector,
		.ist = (uint8_t)(ist & 0x7),
		.type_attr = IDT_P | IDT_DPL(dpl) | IDT_TYPE_INTERRUPT_GATE,
		.offset_mid = (uint16_t)((handler >> 16) & 0xffff),
		.offset_high = (uint32_t)(handler >> 32),
		.reserved = 0,
	};

	return e;
}

uint64_t idt_entry_offset(const struct idt_entry *e)
{
	return (uint64_t)e->offset_low |
	       ((uint64_t)e->offset_mid << 16) |
	       ((uint64_t)e->offset_high << 32);
}

void idt_init(void)
{
	for (unsigned v = 0; v < IDT_STUBS; v++) {
		uint8_t ist = v == 8 ? IST_DOUBLE_FAULT : 0;

		kernel_idt[v] = idt_gate(isr_stub_table[v], GDT_KERNEL_CODE, ist, 0);
		if (idt_entry_offset(&kernel_idt[v]) != isr_stub_table[v])
			panic("idt: vector %u handler 0x%lx reassembles as 0x%lx", v,
			      isr_stub_table[v], idt_entry_offset(&kernel_idt[v]));
	}

	kernel_idt[VECTOR_LAPIC_TIMER] = idt_gate((uint64_t)isr_stub_240, GDT_KERNEL_CODE, 0, 0);
	kernel_idt[VECTOR_SHOOTDOWN] = idt_gate((uint64_t)isr_stub_241, GDT_KERNEL_CODE, 0, 0);
	kernel_idt[VECTOR_HOLD] = idt_gate((uint64_t)isr_stub_242, GDT_KERNEL_CODE, 0, 0);
	kernel_idt[VECTOR_LAPIC_SPURIOUS] = idt_gate((uint64_t)isr_stub_255, GDT_KERNEL_CODE, 0, 0);
	idt_load();
}

void idt_load(void)
{
	struct descriptor_table_register idtr = {
		.limit = sizeof(kernel_idt) - 1,
		.base = (uint64_t)kernel_idt,
	};

	__asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
}

static __noreturn void exception_handler(const struct interrupt_frame *f)
{
	kprintf("\nkinspect-demo: EXCEPTION vector=%lu (%s) error=0x%lx\n", f->vector,
		exception_names[f->vector], f->error_code);
	kprintf("  rip=0x%016lx cs=0x%lx rflags=0x%lx\n", f->rip, f->cs, f->rflags);
	kprintf("  rsp=0x%016lx ss=0x%lx cr2=0x%016lx cr3=0x%016lx\n", f->rsp, f->ss,
		read_cr2(), read_cr3());
	kprintf("  rax=0x%016lx rbx=0x%016lx rcx=0x%016lx rdx=0x%016lx\n", f->rax, f->rbx,
		f->rcx, f->rdx);
	kprintf("  rsi=0x%016lx rdi=0x%016lx rbp=0x%016lx\n", f->rsi, f->rdi, f->rbp);
	kprintf("kinspect-demo: halted\n");
	halt_forever();
}

void interrupt_dispatch(struct interrupt_frame *frame)
{
	if (frame->vector == 14 && (trap_demo_fixup(frame) || smp_probe_fixup(frame)))
		return;
	if (frame->vector < IRQ_BASE_VECTOR)
		exception_handler(frame);
	else if (frame->vector == VECTOR_LAPIC_TIMER)
		smp_timer_interrupt();
	else if (frame->vector == VECTOR_SHOOTDOWN)
		smp_shootdown_interrupt();
	else if (frame->vector == VECTOR_HOLD)
		smp_hold_interrupt();
	else if (frame->vector == VECTOR_LAPIC_SPURIOUS)
		return; /* no EOI for a spurious interrupt */
	else
		pic_irq(frame->vector - IRQ_BASE_VECTOR);
}
