#!/usr/bin/env bash
# Install what kinspect needs on a fresh Debian 12 machine, then keep quiet.
#   system: qemu-system-x86, gdb, gcc, binutils, make, tmux, python3-venv,
#           ovmf and gnu-efi for the UEFI demo kernel, dwarves (pahole) (apt)
#   python: a venv in .venv with kinspect and its test tools (pip)
#   `bootstrap.sh fuzz` (make fuzz) also: clang, for libFuzzer and its sanitizers
#   `bootstrap.sh bench` (make bench) also: GNU time, for a command's own peak memory
# Idempotent: a second run with everything present takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v gdb >/dev/null || need+=(gdb)
command -v gcc >/dev/null || need+=(gcc)
command -v ld >/dev/null || need+=(binutils)
command -v objcopy >/dev/null || need+=(binutils)
command -v make >/dev/null || need+=(make)
command -v tmux >/dev/null || need+=(tmux)  # the TUI's real-terminal test
command -v pahole >/dev/null || need+=(dwarves)  # the oracle of the DWARF types test
command -v python3 >/dev/null || need+=(python3)
# the UEFI demo kernel (issue 7): firmware, and gnu-efi's crt0 and linker script
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
[ -f /usr/lib/crt0-efi-x86_64.o ] || need+=(gnu-efi)
if [ "${1:-}" = fuzz ]; then
    command -v clang >/dev/null || need+=(clang)  # brings libFuzzer (libclang-rt)
fi
if [ "${1:-}" = bench ]; then
    [ -x /usr/bin/time ] || need+=(time)  # benchmarks/bench_speed.py run_cli's peak memory
fi
if command -v python3 >/dev/null && [ ! -x .venv/bin/python ]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${need[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install ${need[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    python3 -m venv .venv
fi
stamp=.venv/.kinspect-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing kinspect into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
