"""The EFI view (8) on a literal UEFI memory map kept by the in-memory kernel.

The map is built here with struct, 48 bytes a descriptor as OVMF gives it
(a 40-byte structure and 8 bytes the firmware owns), and read by the app
through the real Session (tests/tui/fakes.py ``efi_session``). The Linux
capture's direct map maps the first two runtime regions and not the third
(the flash, at 0xffc00000); what the view shows is compared with an
independent Session over the same bytes.
"""

from __future__ import annotations

import struct

from textual.widgets import DataTable

from kinspect.inspector.efi.memmap import EFI_MEMORY_RUNTIME
from kinspect.inspector.errors import InspectorError
from kinspect.inspector.session import Session
from kinspect.tui.app import make_app
from kinspect.tui.widgets.efi import EfiMapView

from .conftest import run
from .fakes import REGISTERS, MemoryTarget, efi_session, memory_session

SIZE = (160, 48)
STRIDE = 48
WB = 0xF  # UC|WC|WT|WB
UC = 0x1
XP, RO = 1 << 14, 1 << 17
RT = EFI_MEMORY_RUNTIME

CONVENTIONAL, LOADER_CODE, BS_DATA, RT_CODE, RT_DATA, ACPI_NVS, RESERVED, MMIO = (
    7,
    1,
    4,
    5,
    6,
    10,
    0,
    11,
)

# type, PhysicalStart, NumberOfPages, Attribute
MAP = [
    (CONVENTIONAL, 0x0, 0xA0, WB),
    (LOADER_CODE, 0x100000, 0x93, WB),
    (BS_DATA, 0x1000000, 0x800, WB),
    (RT_CODE, 0x1E000000, 0x100, WB | RT),  # direct map: 0xffff88801e000000
    (RT_DATA, 0x1E200000, 0x80, WB | RT),  # direct map: 0xffff88801e200000
    (ACPI_NVS, 0x1FF00000, 0xE0, WB | 0x100),  # an unknown attribute bit, kept
    (RESERVED, 0xB0000000, 0x10000, UC),
    (MMIO, 0xFFC00000, 0x400, UC | RT),  # the flash: nothing maps it
]
MAPPED_CODE, MAPPED_DATA, FLASH = 3, 4, 7

# the memory attributes table: RuntimeServicesCode split RO/XP, the data XP
MAT = [
    (RT_CODE, 0x1E000000, 0x20, XP | RT),
    (RT_CODE, 0x1E020000, 0xC0, RO | RT),
    (RT_CODE, 0x1E0E0000, 0x20, XP | RT),
    (RT_DATA, 0x1E200000, 0x80, XP | RT),
]


def descriptor(type_: int, start: int, pages: int, attribute: int, *, virtual: int = 0) -> bytes:
    raw = struct.pack("<IIQQQQ", type_, 0, start, virtual, pages, attribute)
    return raw + b"\xa5" * (STRIDE - len(raw))  # past sizeof: the firmware's, not ours


def memory_map_bytes(entries=MAP) -> bytes:
    return b"".join(descriptor(*entry) for entry in entries)


def attributes_table_bytes(entries=MAT) -> bytes:
    return struct.pack("<IIII", 1, len(entries), STRIDE, 0) + memory_map_bytes(entries)


def uefi_session():
    return efi_session(memory_map_bytes(), STRIDE, memattr=attributes_table_bytes())


async def efi_view(app, pilot) -> EfiMapView:
    await app.wait_idle(30)
    await pilot.pause()
    assert app.stops == 1, app.errors
    await pilot.press("8")
    await app.wait_idle(30)
    await pilot.pause()
    assert app.query_one("#tabs").active == "efi"
    return app.query_one(EfiMapView)


def cells(view: EfiMapView) -> list[list[str]]:
    table = view.query_one(DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def test_the_view_lists_every_descriptor_and_where_runtime_regions_are_mapped():
    truth = uefi_session().efi_memory_map()
    assert truth.mapped_at == {
        MAPPED_CODE: (0xFFFF88801E000000,),
        MAPPED_DATA: (0xFFFF88801E200000,),
        FLASH: (),
    }

    async def go():
        app = make_app(uefi_session())
        async with app.run_test(size=SIZE) as pilot:
            view = await efi_view(app, pilot)
            assert app.focused is view.query_one(DataTable)
            assert [row.descriptor for row in view.rows] == list(truth.descriptors)
            rows = cells(view)
            assert len(rows) == len(MAP)
            assert rows[0] == [
                "",
                "0",
                "ConventionalMemory",
                "0x00000000-0x0009ffff",
                "160",
                "UC|WC|WT|WB",
                "",
            ]
            assert rows[MAPPED_CODE] == [
                "",
                "3",
                "RuntimeServicesCode",
                "0x1e000000-0x1e0fffff",
                "256",
                "UC|WC|WT|WB|RUNTIME",
                "0xffff88801e000000",
            ]
            assert rows[MAPPED_DATA][2] == "RuntimeServicesData"
            assert rows[MAPPED_DATA][-1] == "0xffff88801e200000"
            assert rows[5][2:] == [
                "ACPIMemoryNVS",
                "0x1ff00000-0x1ffdffff",
                "224",
                "UC|WC|WT|WB|0x100",
                "",
            ]
            assert rows[FLASH] == [
                "",
                "7",
                "MemoryMappedIO",
                "0xffc00000-0xffffffff",
                "1024",
                "UC|RUNTIME",
                "not mapped",
            ]
            # runtime regions are highlighted, the unmapped one in red
            table = view.query_one(DataTable)
            runtime_type = table.get_row_at(MAPPED_CODE)[2]
            assert runtime_type.style.color.name == "cyan" and runtime_type.style.bold
            assert table.get_row_at(0)[2].style.color is None
            assert table.get_row_at(FLASH)[-1].style.color.name == "red"
            summary = view.summary
            assert summary == (
                "8 descriptors, 48 bytes apart (version 1) | 3 runtime regions, 1408 pages "
                "(5632K): 2 mapped, 1 not mapped | memory attributes table: 4 entries"
            )
            assert str(view.query_one("#efi-summary").render()) == summary
            attributes = str(view.query_one("#efi-attributes").render())
            assert "v1: 4 entries, 48 bytes apart, flags 0x0" in attributes
            assert "  1 0x1e020000-0x1e0dffff RuntimeServicesCode RO|RUNTIME" in attributes
            assert "  3 0x1e200000-0x1e27ffff RuntimeServicesData XP|RUNTIME" in attributes
            assert app.errors == []

    run(go())


def test_the_cursor_shows_a_region_its_mappings_and_its_attribute_splits():
    async def go():
        app = make_app(uefi_session())
        async with app.run_test(size=SIZE) as pilot:
            view = await efi_view(app, pilot)
            detail = view.query_one("#efi-detail")
            assert str(detail.render()).startswith("#0 ConventionalMemory (type 7)")
            await pilot.press("down", "down", "down")
            await pilot.pause()
            text = str(detail.render())
            assert text.startswith("#3 RuntimeServicesCode (type 5)")
            assert "physical  0x1e000000-0x1e0fffff  256 pages, 1M" in text
            assert f"attribute {WB | RT:#x} UC|WC|WT|WB|RUNTIME" in text
            assert "mapped now at (1):\n  0xffff88801e000000" in text
            assert "memory attributes table entries in it (3):" in text
            assert "    0 0x1e000000-0x1e01ffff XP|RUNTIME" in text
            assert "    2 0x1e0e0000-0x1e0fffff XP|RUNTIME" in text
            await pilot.press("down", "down", "down", "down")
            await pilot.pause()
            text = str(detail.render())
            assert text.startswith("#7 MemoryMappedIO")
            assert "not mapped: no virtual address maps its first page" in text

    run(go())


def test_the_runtime_filter_keeps_the_runtime_regions_only():
    async def go():
        app = make_app(uefi_session())
        async with app.run_test(size=SIZE) as pilot:
            view = await efi_view(app, pilot)
            await pilot.click("#efi-runtime")
            await pilot.pause()
            assert [row[1] for row in cells(view)] == ["3", "4", "7"]
            assert view.summary.startswith("3 of 8 shown | 8 descriptors")
            assert not app.range_filter.active  # the range map's filters are not touched
            await pilot.click("#efi-runtime")
            await pilot.pause()
            assert len(cells(view)) == len(MAP)

    run(go())


def test_a_remap_while_the_kernel_runs_shows_at_the_next_stop():
    """The map stays; the mappings move: the flash mapped, the runtime data unmapped."""
    session = uefi_session()
    truth = Session(MemoryTarget())
    data_leaf = truth.translate(0xFFFF88801E200000).steps[-1]  # a 2M PDE
    first_pte = truth.translate(0xFFFF888000000000).steps[-1]  # a 4K PTE, maps 0x0

    def remap(target: MemoryTarget) -> None:
        target.write_entry(data_leaf.entry_address, data_leaf.entry.raw & ~1)  # P cleared
        target.write_entry(
            first_pte.entry_address, first_pte.entry.raw & ~0x000FFFFFFFFFF000 | 0xFFC00000
        )

    session.target.on_resume = remap
    session.target.break_insert(f"*{REGISTERS['rip']:#x}")

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            view = await efi_view(app, pilot)
            assert view.stop == 1 and [r.mark for r in view.rows] == [""] * len(MAP)
            await pilot.press("c")
            for _ in range(300):
                await pilot.pause(0.01)
                if app.stops == 2 and not app.link.pending:
                    break
            await app.wait_idle()
            await pilot.pause()
            assert view.stop == 2 and view.since == 1
            rows = cells(view)
            assert [row[0] for row in rows] == ["", "", "", "", "-", "", "", "+"]
            assert rows[MAPPED_CODE][-1] == "0xffff88801e000000"
            assert rows[MAPPED_DATA][-1] == "not mapped"
            assert rows[FLASH][-1] == "0xffff888000000000"
            assert view.summary.endswith(
                "2 mapped, 1 not mapped | memory attributes table: 4 entries"
                " | mappings changed since stop 1: 2"
            )
            await pilot.click("#efi-changed")
            await pilot.pause()
            assert [row[1] for row in cells(view)] == ["4", "7"]
            assert "mapping changed since stop 1" in str(view.query_one("#efi-detail").render())
            assert app.errors == []

    run(go())


def refusal(session: Session) -> str:
    """Why an independent session over the same bytes has no UEFI memory map."""
    try:
        session.efi_memory_map()
    except InspectorError as exc:
        return str(exc)
    raise AssertionError("the session read a UEFI memory map")


def test_a_kernel_that_did_not_boot_through_uefi_is_one_line():
    not_uefi = refusal(efi_session(b"", STRIDE))  # the demo kernel booted PVH: size 0
    assert "did not boot through UEFI" in not_uefi
    no_symbols = refusal(memory_session())  # Linux: no efi_memmap symbols

    async def go():
        for session, reason in (
            (efi_session(b"", STRIDE), not_uefi),
            (memory_session(), no_symbols),
        ):
            app = make_app(session)
            async with app.run_test(size=SIZE) as pilot:
                view = await efi_view(app, pilot)
                assert view.summary == f"no UEFI memory map: {reason}"
                assert "\n" not in view.summary
                assert str(view.query_one("#efi-summary").render()) == view.summary
                assert not view.query_one("#efi-body").display
                assert view.query_one(DataTable).row_count == 0
                assert view.export_text() == view.summary + "\n"
                assert app.errors == []  # a fact about the kernel, not a failure
                assert app.is_running

    run(go())


def test_an_unreadable_attributes_table_still_shows_the_map():
    session = uefi_session()
    bad = struct.pack("<IIII", 1, 40, STRIDE, 0)  # 40 entries announced, none there
    session.target.put_virtual(session.resolve("efi_memattr"), bad)
    session.target.put_virtual(session.resolve("efi_memattr_size"), struct.pack("<Q", len(bad)))

    async def go():
        app = make_app(session)
        async with app.run_test(size=SIZE) as pilot:
            view = await efi_view(app, pilot)
            assert len(cells(view)) == len(MAP)
            assert "memory attributes table: " in view.summary
            assert "overrun 16 bytes" in view.summary
            assert "cannot read the memory attributes table" in str(
                view.query_one("#efi-attributes").render()
            )
            assert app.errors == []

    run(go())


def test_export_the_efi_view_as_text(tmp_path):
    async def go():
        app = make_app(uefi_session(), export_dir=tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            await efi_view(app, pilot)
            await pilot.press("e")
            await pilot.pause()
            (path,) = tmp_path.glob("kinspect-efi-*.txt")
            body = path.read_text()
            assert "8 descriptors, 48 bytes apart" in body
            assert (
                "     3 RuntimeServicesCode     0x1e000000-0x1e0fffff      256  "
                "UC|WC|WT|WB|RUNTIME  0xffff88801e000000" in body
            )
            assert "MemoryMappedIO" in body and "not mapped" in body
            assert "memory attributes table v1: 4 entries" in body

    run(go())


def test_the_efi_view_is_read_only_when_shown_and_again_at_each_stop_while_shown():
    session = uefi_session()
    calls = []
    original = type(session).efi_memory_map

    def counting(self):
        calls.append(self)
        return original(self)

    async def go():
        import unittest.mock

        with unittest.mock.patch.object(type(session), "efi_memory_map", counting):
            app = make_app(session)
            async with app.run_test(size=SIZE) as pilot:
                await app.wait_idle(30)
                await pilot.pause()
                assert calls == []  # not shown: not read
                await pilot.press("8")
                await app.wait_idle()
                await pilot.pause()
                assert len(calls) == 1
                await pilot.press("1", "8")  # shown again at the same stop: not read again
                await app.wait_idle()
                assert len(calls) == 1
                await pilot.press("s")  # a stop while shown: read again
                for _ in range(200):
                    await pilot.pause(0.01)
                    if app.stops == 2 and not app.link.pending:
                        break
                await app.wait_idle()
                assert len(calls) == 2
                app.run_command("efi")
                assert app.query_one("#tabs").active == "efi"

    run(go())
