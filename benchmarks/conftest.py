"""Benchmarks boot the demo kernel like the integration tests do."""

from tests.integration.conftest import demo_kernel, qemu, session  # noqa: F401
