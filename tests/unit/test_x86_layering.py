"""The x86 decoders stand on their own: they import nothing of kinspect but its errors and
its number helpers (no formatting, no session, no target), so formatting may import them
without a cycle. (tests/unit/test_layering.py reads the same rule from the sources.)"""

from __future__ import annotations

import pkgutil

import kinspect.inspector.x86
import kinspect.inspector.x86.paging
from tests.fresh_python import fresh_python

ALLOWED = ("kinspect.inspector.x86",)
ALLOWED_EXACT = {
    "kinspect",
    "kinspect.inspector",
    "kinspect.inspector.errors",
    "kinspect.inspector.numbers",
}


def x86_modules() -> list[str]:
    found = []
    for package in (kinspect.inspector.x86, kinspect.inspector.x86.paging):
        prefix = package.__name__ + "."
        found += [info.name for info in pkgutil.iter_modules(package.__path__, prefix)]
    return sorted(found)


def test_the_paging_package_has_a_module_a_job():
    assert {m.rsplit(".", 1)[1] for m in x86_modules() if ".paging." in m} == {
        "address",
        "entry",
        "ranges",
        "translate",
        "walk",
    }


def test_x86_imports_only_x86_and_errors():
    code = (
        "import importlib, sys\n"
        f"for name in {x86_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('kinspect'))))\n"
    )
    result = fresh_python(code, timeout=60)
    loaded = set(result.stdout.split())
    outside = {m for m in loaded if m not in ALLOWED_EXACT and not m.startswith(ALLOWED)}
    assert outside == set()
    assert "kinspect.inspector.x86.paging.walk" in loaded  # the probe did import them
