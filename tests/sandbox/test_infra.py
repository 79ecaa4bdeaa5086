"""Infrastructure failures: SANDBOX_ERROR is retried and never a FAIL; isolation fails closed."""

import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from sandbox import Case, Isolation, Job, Limits, Sandbox, SandboxUnavailable, Status
from sandbox.harness import IDLE_PROCESSES, settled_processes, uid_processes

pytestmark = pytest.mark.isolated
OK_JOB = Job(code="print('ok')", kind="stdio", tests=[Case(expected="ok")])


@pytest.fixture
def flaky_bwrap():
    """A bwrap wrapper that fails its next N launches (N written to a file by the test), then execs
    the real bwrap. It runs as the worker's uid, so it lives in a world-accessible directory."""
    d = Path(tempfile.mkdtemp(prefix="flaky-bwrap-"))
    os.chmod(d, 0o777)
    counter = d / "fail_next"
    counter.write_text("0")
    os.chmod(counter, 0o666)
    script = d / "bwrap"
    script.write_text(
        f"#!/bin/sh\nn=$(cat {counter})\n"
        f'if [ "$n" -gt 0 ]; then echo $((n - 1)) > {counter}; echo "injected launch failure" >&2; exit 1; fi\n'
        'exec /usr/bin/bwrap "$@"\n'
    )
    script.chmod(
        script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    )
    yield str(script), counter
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_launch_failures_are_retried_then_pass(flaky_bwrap):
    script, counter = flaky_bwrap
    with Sandbox(Limits(wall_s=2), retries=2, isolation_config=Isolation(bwrap=script)) as sb:
        sb.recycle()
        counter.write_text("2")  # the next two launches fail
        v = sb.run([OK_JOB])[0]
        assert v.status is Status.PASS and v.attempts == 3


def test_sandbox_that_cannot_start_is_sandbox_error_never_fail(flaky_bwrap):
    script, counter = flaky_bwrap
    with Sandbox(Limits(wall_s=2), retries=1, isolation_config=Isolation(bwrap=script)) as sb:
        sb.recycle()
        counter.write_text("1000")
        wrong = Job(code="print('wrong')", kind="stdio", tests=[Case(expected="right")])
        for v in sb.run([OK_JOB, wrong]):
            assert v.status is Status.SANDBOX_ERROR and v.attempts == 2
            assert "injected launch failure" in v.detail and v.cases == []
        counter.write_text("0")
        assert sb.run([wrong])[0].status is Status.FAIL  # recovers once launches work again


def test_server_killed_mid_task_is_retried():
    with Sandbox(Limits(wall_s=3), retries=2) as sb:
        worker = sb._workers[0]
        first_pid = worker.proc.pid

        def kill_soon():
            time.sleep(0.3)
            os.killpg(first_pid, signal.SIGKILL)

        threading.Thread(target=kill_soon).start()
        v = sb.run(
            [Job(code="import time\ntime.sleep(0.8)\nprint('ok')", kind="stdio", tests=[Case(expected="ok")])]
        )[0]
        assert v.status is Status.PASS and v.attempts == 2
        assert worker.proc.pid != first_pid


def test_missing_bwrap_fails_closed_with_fix():
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        Sandbox(isolation_config=Isolation(bwrap="/nonexistent/bwrap"))


def test_unsafe_mode_needs_explicit_opt_in_and_still_limits():
    with Sandbox(
        Limits(wall_s=1), allow_unsafe=True, isolation_config=Isolation(bwrap="/nonexistent/bwrap")
    ) as sb:
        assert sb.isolated is False
        assert sb.run([OK_JOB])[0].status is Status.PASS
        assert sb.run([Job(code="import time\ntime.sleep(60)", kind="stdio")])[0].status is Status.TLE


def test_close_leaves_no_processes_and_releases_uids():
    sb = Sandbox(Limits(wall_s=1), workers=2)
    sb.run([OK_JOB, OK_JOB])
    uids = sb.uids
    assert all(settled_processes(u) == IDLE_PROCESSES for u in uids)
    sb.close()
    assert all(uid_processes(u) == 0 for u in uids)
    with Sandbox(Limits(wall_s=1), workers=2) as again:
        assert set(again.uids) & set(uids)  # leases were released and are reused


def test_concurrent_run_calls_are_thread_safe():
    with Sandbox(Limits(wall_s=2), workers=2) as sb:
        results = {}

        def worker(k):
            results[k] = sb.run(
                [
                    Job(code=f"print({k}*{i})", kind="stdio", tests=[Case(expected=str(k * i))])
                    for i in range(10)
                ]
            )

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(v.status is Status.PASS for vs in results.values() for v in vs) and len(results) == 4


def test_a_fork_server_outlives_the_thread_that_started_it():
    """bwrap --die-with-parent fires when the *thread* that forked it exits. A fork-server started
    lazily from a caller's short-lived thread must stay up after that thread ends."""
    with Sandbox(Limits(wall_s=2), workers=1) as sb:
        sb.recycle()  # the next job starts a fresh fork-server, from the thread below
        first = []
        t = threading.Thread(target=lambda: first.extend(sb.run([OK_JOB])))
        t.start()
        t.join()
        assert first[0].status is Status.PASS
        worker = sb._workers[0]
        time.sleep(0.3)
        assert worker.proc.poll() is None, "the fork-server died with the thread that started it"
        starts = worker.starts
        assert sb.run([OK_JOB])[0].status is Status.PASS and worker.starts == starts


def test_cli_selftest_and_run(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    p = subprocess.run(
        [sys.executable, "-m", "sandbox", "selftest"], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("PASS ") >= 12 and "FAIL " not in p.stdout
    prog, inp = tmp_path / "p.py", tmp_path / "in.txt"
    prog.write_text("print(input().upper())")
    inp.write_text("hello\n")
    p = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", str(prog), "--stdin", str(inp)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 0 and p.stdout == "HELLO\n" and "[sandbox] PASS" in p.stderr


def test_ray_actor_class_runs_batches_without_ray():
    from sandbox.ray_pool import SandboxActor

    actor = SandboxActor(limits={"wall_s": 2})
    try:
        batch = {"id": [1, 2], "job": [
            {"code": "def f(x): return x * 2", "kind": "call", "entry_point": "f", "tests": [{"args": [2], "expected": 4}]},
            {"code": "def f(x): return x", "kind": "call", "entry_point": "f", "tests": [{"args": [2], "expected": 4}]},
        ]}  # fmt: skip
        out = actor(batch)
        assert out["id"] == [1, 2] and [v["status"] for v in out["verdict"]] == ["PASS", "FAIL"]
    finally:
        actor.close()


def test_profile_mode_stamps_every_phase_and_keeps_the_guard():
    """Profile mode (the bench's breakdown) wraps the guard in a timer: results still authenticate, and a
    frame the program writes itself is still refused."""
    from sandbox.forkserver import STAMPS

    forged = (
        "import os, struct\nos.write(3, struct.pack('>I', 20) + bytes(20))\ndef f(x):\n    return 2 * x\n"
    )
    call = dict(kind="call", entry_point="f", tests=[Case(args=[1], expected=2)])
    with Sandbox(Limits(wall_s=5), workers=1, profile=True) as sb:
        honest, forgery = sb.run(
            [Job(code="def f(x):\n    return 2 * x\n", **call), Job(code=forged, **call)]
        )
        stamps = sb.profiles
    assert honest.status is Status.PASS, honest.detail
    assert forgery.status is Status.SUSPICIOUS, forgery.detail
    path = ("got", "handed", "woke", "isolated", "armed", "ran", "exiting", "reaped", "noticed", "verified")
    assert len(stamps) == 2 and set(STAMPS) <= set(stamps[0])
    assert [stamps[0][k] for k in path] == sorted(stamps[0][k] for k in path)
    assert stamps[0]["guard_calls"] > 0 and stamps[0]["task_minflt"] > 0
