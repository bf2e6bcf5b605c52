"""Shared set-up of the pytest-benchmark suites: the machine line, the size switch."""

import pytest

from embtab.benchmarks._harness import machine, machine_line


def pytest_report_header(config):
    return f"embtab benchmarks on: {machine_line()}"


def pytest_benchmark_update_machine_info(config, machine_info):
    # saved runs (--benchmark-save) carry the ISA level and commit beside pytest-benchmark's own
    machine_info["embtab"] = machine()


@pytest.fixture(scope="session")
def full(request) -> bool:
    """Full sizes when timing; small ones with --benchmark-disable (each path runs once, checked)."""
    return not request.config.getoption("benchmark_disable")
