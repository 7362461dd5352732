"""Moving the UEFI runtime services to the higher half on the OVMF-booted demo kernel
(make bench): the whole `remap efi-runtime` (36 steps, each verified by a walk through
the agent), SetVirtualAddressMap's own request, and GetTime before and after.

SetVirtualAddressMap works once per boot, so each figure is one round on one boot.
"""

from __future__ import annotations

import time

from kinspect.inspector.remap.apply import Remapper
from kinspect.inspector.remap.efi import SVAM
from kinspect.inspector.remap.journal import Journal
from kinspect.inspector.targets.agent import AgentTarget
from tests.integration.conftest import uefi_qemu  # noqa: F401 (the fixture: one OVMF boot)


def test_efi_runtime_move(benchmark, uefi_qemu, tmp_path, capsys):  # noqa: F811
    target = AgentTarget(uefi_qemu.agent_endpoint, timeout=10)
    try:
        remapper = Remapper(target, Journal.open(tmp_path / "journal.jsonl"))
        plan = remapper.plan_efi_runtime()
        assert not plan.refusals
        reports = benchmark.pedantic(remapper.apply, (plan,), rounds=1, iterations=1)
        assert all(r.verified for r in reports)
        svam = next(r for r in reports if r.step.method == SVAM)
        calls = []
        for _ in range(9):
            started = time.perf_counter()
            target.efi_get_time()
            calls.append(time.perf_counter() - started)
        calls.sort()
    finally:
        target.close()
    with capsys.disabled():
        print(
            f"\nremap efi-runtime: {len(reports)} steps in {benchmark.stats.stats.median:.1f} s "
            f"(each verified by the agent's walk); SetVirtualAddressMap step (request, journal, "
            f"GetTime and variable checks) {svam.seconds * 1000:.0f} ms; GetTime through the new "
            f"mapping {calls[4] * 1000:.1f} ms (median of 9)"
        )
