"""Fixtures for the sandbox suite: one warm 1-worker Sandbox shared by the module, short limits."""

import os

import pytest

from sandbox import Case, Job, Limits, Sandbox
from sandbox.harness import IDLE_PROCESSES, settled_processes

LIMITS = Limits(wall_s=1.5, cpu_s=1.0, memory_mb=512, output_bytes=256 << 10, file_size_mb=16)


def pytest_configure(config):
    config.addinivalue_line("markers", "isolated: needs bwrap isolation (skipped where it cannot start)")


def pytest_collection_modifyitems(config, items):
    """Skip the isolated tests (not the unit ones) where isolation cannot start, with the reason."""
    from sandbox.isolation import Isolation, SandboxUnavailable, preflight

    try:
        preflight(Isolation())
        reason = None
    except SandboxUnavailable as e:
        reason = str(e)
    if reason and os.environ.get("SANDBOX_REQUIRED") != "1":
        for item in items:
            if "sb" in getattr(item, "fixturenames", ()) or item.get_closest_marker("isolated"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def sb():
    with Sandbox(LIMITS, workers=1) as s:
        yield s


@pytest.fixture
def run(sb):
    """run(code, kind="stdio", tests=..., **job) -> Verdict, then check the host: the worker's uid
    runs exactly its fork-server (IDLE_PROCESSES: bwrap, monitor, zygote, next task) and that fork-server is the same, alive process."""
    worker = sb._workers[0]

    def _run(code, kind="stdio", tests=None, **kw):
        tests = tests if tests is not None else [Case()]
        v = sb.run([Job(code=code, kind=kind, tests=tests, **kw)])[0]
        if worker.proc is not None:
            assert worker.proc.poll() is None
            assert settled_processes(worker.uid) == IDLE_PROCESSES, (
                "something the task started is still running"
            )
        return v

    return _run


def stdio(stdin="", expected=None):
    return Case(stdin=stdin) if expected is None else Case(stdin=stdin, expected=expected)
