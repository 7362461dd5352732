# kinspect: every target installs what it needs first (scripts/bootstrap.sh).
PY      := .venv/bin/python
KERNEL  := kernel-agent/build/demo-kernel.elf

.PHONY: all deps kernel linux-guest demo demo-uefi test unit integration bench soak lint fuzz clean

all: kernel

deps:
	@bash scripts/bootstrap.sh

kernel: deps
	@$(MAKE) --no-print-directory -C kernel-agent all uefi

# A stock Debian kernel and a busybox initramfs for the Linux tests (tests/linux/), in
# build/linux/: downloaded once, never installed.
linux-guest: deps
	@bash scripts/fetch-linux.sh

# Boot the demo kernel in QEMU and open the inspector on it.
demo: kernel
	$(PY) -m kinspect.inspector.cli demo --elf $(KERNEL)

# The same, booted through UEFI (OVMF on q35; issue 7).
demo-uefi: kernel
	$(PY) -m kinspect.inspector.cli demo --uefi --elf $(KERNEL)

# The whole suite: unit tests and QEMU integration tests, on one worker per core (at
# most 4; pytest-xdist): the TUI's pilot tests are half the time and use one CPU each.
# The Linux tests share one guest, so they stay on one worker (tests/linux/conftest.py).
test: kernel linux-guest
	$(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses=4 --dist loadgroup --durations=30

unit: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

integration: kernel linux-guest
	$(PY) -m pytest -q -p no:cacheprovider tests/integration tests/linux

bench: kernel linux-guest
	@bash scripts/bootstrap.sh bench
	$(PY) -m pytest -q -p no:cacheprovider -o python_files="bench_*.py" benchmarks --benchmark-only --benchmark-columns=min,median,mean,max,rounds

# 10,000 mixed requests (reads, walks, stop, journaled protect toggles) over a line that
# drops 1%, corrupts 1% and duplicates 0.5% of bytes: no reply lost, none applied twice,
# the journal equal to the tables at the end (benchmarks/soak_agent.py; not in make test).
soak: kernel
	$(PY) -m benchmarks.soak_agent

# libFuzzer (clang, ASan, UBSan) over the agent's frame decoder, msgpack decoder and
# request dispatcher, each for FUZZ_SECONDS on one core (kernel-agent/fuzz/; one harness
# or two: FUZZ_HARNESSES="msgpack dispatch"); not part
# of `make test` (tests/unit/test_agent_fuzz_corpus.py replays the committed corpus).
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/bootstrap.sh fuzz
	@$(MAKE) --no-print-directory -C kernel-agent/fuzz run FUZZ_SECONDS=$(FUZZ_SECONDS) \
		$(if $(FUZZ_HARNESSES),FUZZ_HARNESSES="$(FUZZ_HARNESSES)")

# ruff (lint and format) and mypy: strict for protocols/ and inspector/x86/, default
# elsewhere. mypy checks the kinspect.* names through a tree of links (the folders keep
# their names in the repository; the installed package puts them under kinspect).
LINT_DIRS := inspector protocols tui tests benchmarks examples
TYPECHECK := build/typecheck
lint: deps
	$(PY) -m ruff check $(LINT_DIRS)
	$(PY) -m ruff format --check $(LINT_DIRS)
	@mkdir -p $(TYPECHECK)/kinspect
	@for p in inspector protocols tui; do ln -sfn ../../../$$p $(TYPECHECK)/kinspect/$$p; done
	MYPYPATH=$(TYPECHECK) $(PY) -m mypy -p kinspect.inspector -p kinspect.protocols -p kinspect.tui

clean:
	@$(MAKE) --no-print-directory -C kernel-agent clean
	@$(MAKE) --no-print-directory -C kernel-agent/fuzz clean
