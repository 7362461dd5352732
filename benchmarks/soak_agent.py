"""make soak: 10,000 mixed requests to the demo kernel's agent over a line that drops 1%,
corrupts 1% and duplicates 0.5% of bytes each way (115,200 baud, seeded). Every reply must
arrive and be right, and every mutating request be applied once: the agent's stop counter
moves by one per stop, and the remaps (protect toggles journaled through kinspect's
Remapper) leave the journal agreeing with the kernel's tables, read at the end through
QEMU's monitor (`xp`), not through the agent.

The mix is dominated by small requests, as a session's are (at this damage nearly every
frame of a few hundred bytes arrives damaged, and a 4 KiB reply crosses in 16-byte
chunks, so a big request costs seconds): of each 100 requests, 1 whole-map walk and
the rest small reads (8 to 64 bytes), translations, resume/stop pairs and `regs`; a
journaled protect toggle every 250 requests (its two plans made once over a clean line:
planning reads every page table, 40 KiB). The line stays paced at 115,200 baud.

    python -m benchmarks.soak_agent [--requests N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from kinspect.inspector import api
from kinspect.inspector.remap.apply import Remapper
from kinspect.inspector.remap.journal import Journal
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.protocols.transports import LossyTransport, SocketTransport

SCRATCH = 0xFFFFD00000000000  # nothing mapped here in the demo kernel: the soak maps a page
SCRATCH_PA = 0x200000
PAGE = 0x1000
RW, NX = 1 << 1, 1 << 63
ACCESSED_DIRTY = (1 << 5) | (1 << 6)  # the CPU's to set
#: A walk of the whole map every WALK_EVERY requests, a protect toggle every PROTECT_EVERY.
WALK_EVERY = 100
PROTECT_EVERY = 250


def xp(qemu, pa: int) -> int:
    """A 64-bit word of physical memory as QEMU's monitor reads it (not through the agent)."""
    return int(qemu.monitor(f"xp /1gx {pa:#x}").split(":")[1].split()[0], 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    qemu = api.launch_demo()
    try:
        spec = f"unix:{qemu.serial_socket}"
        journal_path = Path(tempfile.mkdtemp()) / "soak.jsonl"
        # Over a clean line: map the scratch page, and the map as it is either way.
        clean = AgentTarget(spec, timeout=5)
        setup = Remapper(clean, Journal.open(journal_path))
        setup.apply(setup.plan_map(SCRATCH, SCRATCH_PA, PAGE, flags=RW | NX))
        expected = {False: clean.walk_ranges()}
        # The two toggles, planned here: a plan reads every page table (40 KiB, minutes at
        # this damage); applying one (journaled, checked by a walk) is what the soak repeats.
        plans = {True: setup.plan_protect(SCRATCH, PAGE, flags=NX)}  # read-only
        setup.apply(plans[True])
        expected[True] = clean.walk_ranges()
        plans[False] = setup.plan_protect(SCRATCH, PAGE, flags=RW | NX)  # writable again
        setup.apply(plans[False])
        page = clean.read_physical(0x100000, 4096)
        regs_cr3 = clean.agent_registers()["cr3"]
        # Addresses to translate: the start of each range and a page inside it.
        translations = []
        for r in expected[False]:
            for va in (r.start, r.start + ((r.end - r.start) // 2 & ~(PAGE - 1))):
                translations.append((va, clean.translate(va).pa))
        clean.resume()
        clean.close()
        link = LossyTransport(
            SocketTransport.connect_unix(str(qemu.serial_socket)),
            115200,
            drop=0.01,
            corrupt=0.01,
            duplicate=0.005,
            seed=args.seed,
        )
        target = AgentTarget(link, timeout=5, retries=5)
        client = target.client
        remapper = Remapper(target, Journal.open(journal_path))
        agent_before = client.call("link_stats")
        started = time.monotonic()
        kinds = ("read", "translate", "regs", "stop", "walk", "protect")
        counts = dict.fromkeys(kinds, 0)
        seconds = dict.fromkeys(kinds, 0.0)
        stops_sent = 0
        protected = False
        wrong = 0
        for n in range(args.requests):
            began = time.monotonic()
            roll = rng.random()
            if n % WALK_EVERY == WALK_EVERY // 2:
                kind = "walk"
                if target.walk_ranges() != expected[protected]:
                    wrong += 1
            elif n % PROTECT_EVERY == PROTECT_EVERY // 2:
                kind = "protect"
                protected = not protected
                for report in remapper.apply(plans[protected]):
                    if report.problems:  # the walk after the step is not what was planned
                        wrong += 1
            elif roll < 0.65:
                kind = "read"
                offset = rng.randrange(0, 4096 - 64)
                size = rng.choice((8, 16, 32, 64))
                if target.read_physical(0x100000 + offset, size) != page[offset : offset + size]:
                    wrong += 1
            elif roll < 0.85:
                kind = "translate"
                va, pa = translations[rng.randrange(len(translations))]
                if target.translate(va).pa != pa:
                    wrong += 1
            elif roll < 0.95:
                kind = "stop"  # two mutating requests: resume, then stop again
                target.resume()
                client.call("stop")
                stops_sent += 1
            else:
                kind = "regs"
                if target.agent_registers()["cr3"] != regs_cr3:
                    wrong += 1
            counts[kind] += 1
            seconds[kind] += time.monotonic() - began
            if n % 500 == 499:
                print(f"  {n + 1} requests, {time.monotonic() - started:.0f} s", flush=True)
        elapsed = time.monotonic() - started
        agent_after = client.call("link_stats")
        stats = client.stats
        # The journal against the kernel: for every entry an open step wrote, the newest
        # value written is what QEMU's monitor reads there now; and the walk is the state
        # the last toggle left.
        journal_ok = target.walk_ranges() == expected[protected]
        open_steps = remapper.journal.open_steps()
        newest: dict[int, int] = {}
        for step in sorted(open_steps, key=lambda s: s.seq):
            for _va, _level, entry_pa, _old, new in step.result or []:
                newest[entry_pa] = new
        for entry_pa, new in newest.items():
            if xp(qemu, entry_pa) & ~ACCESSED_DIRTY != new & ~ACCESSED_DIRTY:
                journal_ok = False
        remapper.undo()
        target.resume()
        stops_applied = agent_after["stops"] - agent_before["stops"]
        print(f"soak: {args.requests} requests in {elapsed:.1f} s over {link.description}")
        print(
            "  mix: "
            + ", ".join(
                f"{kind} {counts[kind]} ({seconds[kind] / max(counts[kind], 1):.3f} s each)"
                for kind in kinds
            )
        )
        print(
            f"  (of each {WALK_EVERY}: 1 walk of the whole map; the rest 65% reads of 8-64 "
            f"bytes, 20% translations, 10% resume/stop pairs (mutating), 5% regs; a journaled "
            f"protect toggle, planned once over a clean line, every {PROTECT_EVERY})"
        )
        print(
            f"  client: {stats.requests} requests, NAKs sent {stats.naks_sent}, NAKs received "
            f"{stats.naks_received}, resends {stats.resends}, timeouts {stats.timeouts}, "
            f"chunks {stats.chunks}, chunks resent {stats.chunks_resent}"
        )
        print(f"  agent: {agent_after}")
        print(f"  line damage: {link.damage}")
        print(
            f"  wrong replies {wrong}; stops sent {stops_sent}, applied {stops_applied}; "
            f"journal {len(open_steps)} open steps, matches the tables: {journal_ok}"
        )
        ok = wrong == 0 and stops_applied == stops_sent and journal_ok
        print("soak: OK" if ok else "soak: FAILED")
        target.close()
        return 0 if ok else 1
    finally:
        qemu.stop()


if __name__ == "__main__":
    sys.exit(main())
