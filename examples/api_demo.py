"""Boot the demo kernel, attach, and script an inspection with the Python API.

Run: .venv/bin/python examples/api_demo.py   (after `make kernel`)
"""

from kinspect.inspector import api

with api.launch_demo() as qemu, api.attach(qemu.gdb_endpoint, elf=api.DEMO_KERNEL) as k:
    print(k.control_registers()["CR0"])  # CR0=0x80010011 [PE ET WP PG]
    for r in k.ranges():  # coalesced ranges, ptdump style
        if r.permissions.writable and r.permissions.executable:
            print("W+X:", r)
    t = k.translate(k.resolve("demo_level3"))  # the walk, level by level
    for step in t.steps:
        print(" ", step)
    print(f"demo_level3 -> {t.pa:#x}")
    print("aliases:", [hex(va) for va in k.aliases(t.pa)])
