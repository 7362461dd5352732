"""Build the C agent for the host and run it on a fake machine (tests only).

``build_host_tools`` compiles ``kernel-agent/agent/*.c`` (all but the x86
register code) with ``kernel-agent/tests/*.c`` under ASan and UBSan;
``HostAgent`` runs the agent binary on an image of physical memory and CPU
state and hands back a pipe transport to it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from kinspect.protocols.transports import FdTransport

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "kernel-agent" / "agent"
TESTS_DIR = ROOT / "kernel-agent" / "tests"
CODEC = ["agent_wire.c", "agent_msgpack.c"]
FLAGS = [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-O1",
    "-g",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    f"-I{AGENT_DIR}",
]


def build_host_tools(out: Path, defines: tuple[str, ...] = ()) -> dict[str, Path]:
    """``defines``: build flags such as ``-DAGENT_READONLY`` (the read-only agent)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is not installed: run `make test` (it installs it)")
    tools = {
        "codec_tool": ["codec_tool.c", *CODEC],
        "host_agent": ["host_agent.c", "agent.c", *CODEC],
    }
    built = {}
    for name, sources in tools.items():
        paths = [
            str(TESTS_DIR / s) if s.startswith(("codec_tool", "host_agent")) else str(AGENT_DIR / s)
            for s in sources
        ]
        target = out / name
        subprocess.run(
            [gcc, *FLAGS, *defines, *paths, "-o", str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
        built[name] = target
    return built


_BUILT: dict[str, Path] = {}


def host_tools() -> dict[str, Path]:
    """The host tools, built once per test process."""
    if not _BUILT:
        _BUILT.update(build_host_tools(Path(tempfile.mkdtemp(prefix="kinspect-agent-host-"))))
    return _BUILT


def write_image(
    path: Path,
    memory,
    *,
    ram_size: int,
    cr0: int = 0x80010011,
    cr3: int,
    cr4: int = 0x20,
    efer: int = 0xD00,
    pat: int = 0x0007040600070406,
    maxphyaddr: int = 52,
) -> None:
    """``memory`` is a ptbuilder.PhysicalMemory (its pages go into the image)."""
    with open(path, "wb") as f:
        f.write(b"KAGENTIM")
        f.write(
            struct.pack("<8Q", ram_size, cr0, cr3, cr4, efer, pat, maxphyaddr, len(memory.pages))
        )
        for address, page in sorted(memory.pages.items()):
            f.write(struct.pack("<Q", address))
            f.write(bytes(page))


class HostAgent:
    """The host-built agent as a subprocess; ``transport`` talks to it."""

    def __init__(self, binary: Path, image: Path, *, boot_nonce: int | None = None) -> None:
        """``boot_nonce``: what the port supplies as ``agent_ops.boot_nonce`` (None: none)."""
        env = dict(os.environ)
        env.pop("HOST_AGENT_BOOT_NONCE", None)
        if boot_nonce is not None:
            env["HOST_AGENT_BOOT_NONCE"] = hex(boot_nonce)
        self.process = subprocess.Popen(
            [str(binary), str(image)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.stderr: str | None = None
        # Duplicates: the transport may close its descriptors before we close the pipes.
        self.transport = FdTransport(
            os.dup(self.process.stdout.fileno()), os.dup(self.process.stdin.fileno()), "host agent"
        )

    def close(self) -> str:
        """Stop the agent; return what it wrote on stderr (console echo, sanitizer reports)."""
        if self.stderr is not None:
            return self.stderr
        self.transport.close()
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr = self.process.stderr.read().decode(errors="replace")
        self.process.stdout.close()
        self.process.stderr.close()
        return self.stderr
