"""Write the fuzzers' seed corpus (kernel-agent/fuzz/corpus/) from the shared vectors.

    .venv/bin/python kernel-agent/fuzz/make_corpus.py

frame/    the frames and streams of protocols/agent_vectors.json, COBS vectors
msgpack/  the vectors' msgpack messages, and one request per method
dispatch/ a configuration byte (fuzz_dispatch.c) and requests separated by C1 C1:
          one seed per method, valid parameters on the harness's fake machine,
          and the remap and UEFI sequences that reach deep into the agent

Requests are encoded by kinspect's own encoder (protocols/agent_wire.py), so the
seeds are what the inspector really sends. Rerun after changing the methods; the
files are small and committed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kinspect.protocols.agent_wire import encode_frame, encode_request  # noqa: E402

OUT = Path(__file__).resolve().parent / "corpus"
SEPARATOR = b"\xc1\xc1"

# fuzz_dispatch.c's configuration bits and its fake machine.
LA57, NO_NXE, UEFI, RAW = 0x01, 0x02, 0x40, 0x80
MAXPHY40, NO_REMAP, NO_CPU = 0x04, 0x10, 0x20
DIRECT = 0xFFFF888000000000
CODE = 0xFFFFFFFF80100000
RSP = DIRECT + 0x10F00
GDT, IDT, TSS = DIRECT + 0x20000, DIRECT + 0x22000, DIRECT + 0x21000
FAKE = 0x40000000
RTCODE, RTDATA, MMIO = FAKE, FAKE + 0x3000, 0xFFC00000
NEW = 0x200000000000
GLOBAL = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")
P, RW, US, NX = 1, 2, 4, 1 << 63


def requests(*calls: tuple) -> list[bytes]:
    return [encode_request(i + 1, c[0], list(c[1:])) for i, c in enumerate(calls)]


METHODS: dict[str, list[tuple]] = {
    "hello": [("hello",)],
    "regs": [("regs",)],
    "read_phys": [("read_phys", 0x100000, 64), ("read_phys", 0x1000, 16)],
    "read_virt": [("read_virt", CODE, 32), ("read_virt", DIRECT + 0x20000, 64)],
    "translate": [("translate", 0x7F0000000000), ("translate", 0xFFFFC90000001000)],
    "walk": [("walk",), ("walk", 0xFFFF800000000000, 2)],
    "stop_resume": [("stop",), ("regs",), ("resume",)],
    "map": [("map", 0x600000000000, 0x30000, 0x2000, 0x1000, RW | NX), ("walk", 0x600000000000, 4)],
    "map_2m": [("map", 0x600000000000, 0x200000, 0x200000, 0x200000, RW | NX)],
    "unmap": [("unmap", 0x5000, 0x1000, 0x1000)],
    "protect": [("protect", 0x5000, 0x2000, 0x1000, NX), ("translate", 0x5000)],
    "set_entries": [("set_entries", False, [[0x6000, 1, 0x6000 | P]])],
    "refused": [("unmap", CODE, 0x1000, 0x1000), ("protect", RSP & ~0xFFF, 0x1000, 0x1000, NX)],
    "move_stack": [("move_stack", DIRECT + 0x10000, DIRECT + 0x11000, 0x10000, True)],
    "load_descriptors": [("load_descriptors", GDT, IDT, TSS), ("regs",)],
    "switch_cr3": [("switch_cr3", 0x100000), ("switch_cr3", 0x200000)],
    "retry": [("stop",), ("stop",)],
    "errors": [("nope",), ("read_phys", 1), ("read_phys", 1 << 40, 8), ("walk", 0, 0)],
}
METHODS_UEFI: dict[str, list[tuple]] = {
    "efi_info": [("efi_info",)],
    "efi_get_time": [("efi_get_time",)],
    "efi_get_variable": [
        ("efi_get_variable", "PlatformLang", GLOBAL),
        ("efi_get_variable", "Weird", GLOBAL),
    ],
    "efi_next_variable_name": [("efi_next_variable_name", "", bytes(16))],
    "efi_virtual_mode": [
        (
            "efi_set_virtual_address_map",
            [[RTCODE, NEW + RTCODE], [RTDATA, NEW + RTDATA], [MMIO, NEW + MMIO]],
        ),
        ("efi_info",),
        ("efi_get_time",),
        ("efi_next_variable_name", "", bytes(16)),
        ("unmap", NEW + RTCODE, 0x1000, 0x1000),
    ],
}


def write(out: Path, folder: str, name: str, data: bytes) -> None:
    path = out / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}-{hashlib.sha1(data).hexdigest()[:8]}").write_bytes(data)


def main(argv: list[str]) -> None:
    """``make_corpus.py [DIR]``: write the corpus to DIR (default: the committed one)."""
    out = Path(argv[0]) if argv else OUT
    vectors = json.loads((ROOT / "protocols" / "agent_vectors.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    for i, v in enumerate(vectors["frames"]):
        write(out, "frame", f"vector{i}", bytes.fromhex(v["frame"]))
    for i, v in enumerate(vectors["streams"]):
        write(out, "frame", f"stream{i}", bytes.fromhex(v["stream"]))
    for i, v in enumerate(vectors["cobs_invalid"]):
        write(out, "frame", f"cobs_invalid{i}", bytes.fromhex(v))
    for i, v in enumerate(vectors["messages"]):
        write(out, "msgpack", f"message{i}", bytes.fromhex(v["msgpack"]))
    for name, calls in {**METHODS, **METHODS_UEFI}.items():
        write(out, "msgpack", name, requests(*calls)[0])
        write(out, "frame", name, encode_frame(requests(*calls)[0]))
    for name, calls in METHODS.items():
        write(out, "dispatch", name, bytes([0]) + SEPARATOR.join(requests(*calls)))
    for name, calls in METHODS_UEFI.items():
        write(out, "dispatch", name, bytes([UEFI]) + SEPARATOR.join(requests(*calls)))
    everything = requests(
        ("hello",),
        ("walk",),
        ("translate", CODE),
        ("map", 0x600000000000, 0x30000, 0x1000, 0x1000, RW),
    )
    for name, config in [
        ("la57", LA57),
        ("no_nxe", NO_NXE),
        ("maxphy40", MAXPHY40),
        ("no_remap", NO_REMAP),
        ("no_cpu", NO_CPU),
    ]:
        write(out, "dispatch", name, bytes([config]) + SEPARATOR.join(everything))
    stream = b"boot\r\n" + b"".join(encode_frame(r) for r in everything) + b"\x00\x05\x00"
    write(out, "dispatch", "raw", bytes([RAW]) + stream)


if __name__ == "__main__":
    main(sys.argv[1:])
