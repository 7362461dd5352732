# kinspect: every target installs what it needs first (scripts/bootstrap.sh).
PY      := .venv/bin/python
KERNEL  := kernel-agent/build/demo-kernel.elf

.PHONY: all deps kernel demo demo-uefi test unit integration bench lint clean

all: kernel

deps:
	@bash scripts/bootstrap.sh

kernel: deps
	@$(MAKE) --no-print-directory -C kernel-agent all uefi

# Boot the demo kernel in QEMU and open the inspector on it.
demo: kernel
	$(PY) -m kinspect.inspector.cli demo --elf $(KERNEL)

# The same, booted through UEFI (OVMF on q35; issue 7).
demo-uefi: kernel
	$(PY) -m kinspect.inspector.cli demo --uefi --elf $(KERNEL)

# The whole suite: unit tests and QEMU integration tests.
test: kernel
	$(PY) -m pytest -q -p no:cacheprovider

unit: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: kernel
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

bench: kernel
	$(PY) -m pytest -q -p no:cacheprovider -o python_files="bench_*.py" benchmarks --benchmark-only --benchmark-columns=min,median,mean,max,rounds

lint: deps
	$(PY) -m ruff check inspector protocols tui tests

clean:
	@$(MAKE) --no-print-directory -C kernel-agent clean
