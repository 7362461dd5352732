"""Why did it fault: a catchpoint on #PF, the explanation, then a triple fault kept paused.

Run: .venv/bin/python examples/fault_demo.py
"""

from kinspect.inspector import api

ELF = api.DEMO_KERNEL

# A write to .rodata, caught before the #PF handler runs.
with api.launch_demo(append="fault=pf-write-ro", exception_log=True, stopped=True) as qemu:
    with api.attach(qemu.gdb_endpoint, elf=ELF) as k:
        k.break_insert("pic_init")  # the IDT is loaded by then
        k.resume()
        k.wait_for_stop(60)
        for bp in k.breakpoints():
            k.break_delete(bp.number)
        print(*k.catch(14))
        k.resume()
        k.wait_for_stop(60)
        print(k.fault())

# The seed's mistake: the GDT left below an identity map that is dropped. QEMU pauses.
with api.launch_demo(append="fault=seed-lowgdt", exception_log=True, stopped=True) as qemu:
    with api.attach(qemu.gdb_endpoint, elf=ELF) as k:
        k.resume()
        k.wait_for_stop(60)
        print("QEMU:", qemu.status()["status"])
        print(k.triple_fault(qemu.int_log_text()))
        k.close(resume=False)
