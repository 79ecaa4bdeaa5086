"""Hostile programs, each with its expected verdict; the host is checked after each (see conftest.run:
the worker's uid runs exactly its fork-server, alive and unrestarted)."""

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sandbox import Case, Job, Limits, Status

from .conftest import LIMITS


@pytest.fixture
def same_server(sb):
    """Asserts the fork-server was not restarted (and not killed) by the test."""
    worker = sb._workers[0]
    if worker.proc is None:
        worker.start()
    before = (worker.starts, worker.proc.pid)
    yield
    assert (worker.starts, worker.proc.pid) == before


def test_fork_bomb_is_tle_and_leaves_nothing(run, same_server):
    t0 = time.monotonic()
    v = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert v.status is Status.TLE
    assert time.monotonic() - t0 < LIMITS.wall_s + 5
    assert run("print('fine')", tests=[Case(expected="fine")]).status is Status.PASS


def test_memory_bomb_is_mle_and_harness_memory_stable(run, same_server):
    rss_before = _rss_kb()
    small = Limits(wall_s=5, cpu_s=5, memory_mb=160)  # filling 512 MiB page by page takes ~1 s here
    for code in ("x = bytearray(8 << 30)", "xs = []\nwhile True:\n    xs.append(' ' * (1 << 20))"):
        v = run(code, limits=small)
        assert v.status is Status.MLE, (code, v.detail, v.stderr[-300:])
    assert _rss_kb() - rss_before < 50_000  # KiB: the harness never held the task's memory


def test_busy_loop_ignoring_signals_is_tle(run, same_server):
    code = (
        "import signal\n"
        "for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGXCPU, signal.SIGINT):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "signal.alarm(1)\n"
        "while True:\n    pass\n"
    )
    t0 = time.monotonic()
    assert run(code).status is Status.TLE
    assert time.monotonic() - t0 < LIMITS.wall_s + 5


def test_cpu_limit_fires_before_a_long_wall_limit(run, same_server):
    t0 = time.monotonic()
    v = run("while True:\n    pass\n", limits=Limits(wall_s=20, cpu_s=1))
    assert v.status is Status.TLE
    assert time.monotonic() - t0 < 5  # RLIMIT_CPU: SIGXCPU at 1 s, SIGKILL at 2 s of CPU


def test_sleep_is_tle_by_wall_clock(run, same_server):
    t0 = time.monotonic()
    v = run("import time\ntime.sleep(3600)")
    took = time.monotonic() - t0
    assert v.status is Status.TLE
    assert LIMITS.wall_s - 0.1 < took < LIMITS.wall_s + 3


def test_writes_outside_tmp_are_denied_and_host_canary_untouched(run, tmp_path, same_server):
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    (canary_dir / "c.txt").write_text("original")
    os.chmod(tmp_path, 0o755)
    targets = [
        "/usr/pwned",
        "/etc/pwned",
        "/pwned",
        os.path.expanduser("~/pwned"),
        str(canary_dir / "c.txt"),
        str(canary_dir / "new"),
    ]
    code = (
        f"targets = {targets!r}\n"
        "for t in targets:\n"
        "    try:\n"
        "        open(t, 'w').write('pwned')\n"
        "        print('WROTE', t)\n"
        "    except OSError as e:\n"
        "        print('denied', t, type(e).__name__)\n"
    )
    v = run(code)
    assert v.status is Status.PASS
    assert "WROTE" not in v.stdout and v.stdout.count("denied") == len(targets)
    assert sorted(os.listdir(canary_dir)) == ["c.txt"] and (canary_dir / "c.txt").read_text() == "original"
    for t in targets[:4]:
        assert not os.path.exists(t)


def test_secrets_do_not_leak(run, sb, tmp_path, monkeypatch):
    secret = "CANARY-7f3a9c"
    monkeypatch.setenv("SANDBOX_TEST_SECRET", secret)
    (tmp_path / "secret.txt").write_text(secret)
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "secret.txt", 0o644)
    sb.recycle()  # the next fork-server starts with the secret in the harness's environment
    code = (
        "import os\nprint(dict(os.environ))\n"
        f"for p in ['/etc/shadow', '/proc/1/environ', '/proc/2/environ', '/proc/self/environ', {str(tmp_path / 'secret.txt')!r}]:\n"
        "    try:\n        print(p, open(p, 'rb').read())\n"
        "    except OSError as e:\n        print(p, 'unreadable', e)\n"
    )
    v = run(code)
    assert v.status is Status.PASS
    assert secret not in v.stdout and secret not in v.stderr
    assert "/etc/shadow unreadable" in v.stdout and "secret.txt unreadable" in v.stdout


def test_network_is_blocked_and_listener_sees_nothing(run, same_server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port, accepted = listener.getsockname()[1], []

    def accept_loop(stop):
        while not stop.is_set():
            with contextlib.suppress(OSError):  # accept() timed out: look at `stop` again
                accepted.append(listener.accept())

    stop = threading.Event()
    t = threading.Thread(target=accept_loop, args=(stop,), daemon=True)
    t.start()
    code = (
        "import socket\n"
        f"for what, fn in [('tcp', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=1)),\n"
        "                 ('dns', lambda: socket.getaddrinfo('example.com', 80)),\n"
        "                 ('raw', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))]:\n"
        "    try:\n        fn()\n        print(what, 'CONNECTED')\n"
        "    except OSError as e:\n        print(what, 'blocked', type(e).__name__)\n"
    )
    v = run(code)
    time.sleep(0.3)
    stop.set()
    t.join()
    listener.close()
    assert v.status is Status.PASS
    assert "CONNECTED" not in v.stdout and v.stdout.count("blocked") == 3
    assert accepted == []


def test_huge_output_is_ole_and_capped(run, same_server):
    v = run("import sys\nfor _ in range(1600):\n    sys.stdout.write('x' * 65536)\n")  # 100 MiB
    assert v.status is Status.OLE
    assert len(v.stdout.encode()) <= LIMITS.output_bytes
    huge_return = "def f():\n    return 'y' * (8 << 20)\n"  # 8 MiB > result_bytes (4 MiB)
    v = run(huge_return, kind="call", entry_point="f", tests=[Case(expected="y")])
    assert v.status is Status.OLE


def test_killing_parent_or_group_fails_and_server_survives(run, same_server):
    code = (
        "import os, signal\n"
        "for what, fn in [('ppid', lambda: os.kill(os.getppid(), 9)), ('pid1', lambda: os.kill(1, 9)),\n"
        "                 ('killpg', lambda: os.killpg(os.getpgid(os.getppid()), 9)), ('all', lambda: os.kill(-1, 9)),\n"
        "                 ('server', lambda: os.kill(2, signal.SIGKILL))]:\n"
        "    try:\n        fn()\n        print(what, 'SENT')\n"
        "    except OSError as e:\n        print(what, 'denied', e.errno)\n"
    )
    v = run(code)
    assert v.status is Status.PASS
    assert "SENT" not in v.stdout and v.stdout.count("denied 1") == 5  # EPERM from seccomp
    assert run("print(1)", tests=[Case(expected="1")]).status is Status.PASS


def test_double_fork_daemon_is_killed_without_false_tle(run, same_server):
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    try:\n        os.setsid()\n    except OSError:\n        pass\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(3600)\n"  # the daemon, holding stdout open
        "    os._exit(0)\n"
        "os.wait()\nprint('parent done')\n"
    )
    t0 = time.monotonic()
    v = run(code, tests=[Case(expected="parent done")])
    assert v.status is Status.PASS, v.detail
    assert time.monotonic() - t0 < 1.0  # ended when the main process did, not at the wall limit


def test_big_file_and_fd_exhaustion_are_errors_host_unchanged(run, same_server):
    free_before = os.statvfs("/tmp").f_bavail
    v = run("open('/tmp/big', 'wb').write(b'x' * (200 << 20))")
    assert v.status is Status.ERROR and "File too large" in v.stderr
    v = run("fs = []\nwhile True:\n    fs.append(open('/dev/null'))\n")
    assert v.status is Status.ERROR and "Too many open files" in v.stderr
    assert abs(os.statvfs("/tmp").f_bavail - free_before) * os.statvfs("/tmp").f_frsize < (100 << 20)


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exit_before_tests_fails(run, exit_call, same_server):
    code = f"{exit_call}\ndef f(x):\n    return x\n"
    v = run(code, kind="call", entry_point="f", tests=[Case(args=[1], expected=1)])
    assert v.status is Status.FAIL and v.pass_vector == [False]
    v = run(code, kind="assert", tests=[Case(code="assert f(1) == 1")])
    assert v.status is Status.FAIL


def test_always_equal_object_fails_call_and_is_suspicious_in_assert_style(run, same_server):
    code = "class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\ndef f(x):\n    return Any()\n"
    v = run(code, kind="call", entry_point="f", tests=[Case(args=[1], expected=2)])
    assert v.status is Status.FAIL
    v = run(code, kind="assert", tests=[Case(code="assert f(1) == 2")])
    assert v.status is Status.SUSPICIOUS and "constant __eq__" in v.detail
    sub = "class S(str):\n    def __eq__(self, o):\n        return True\ndef f():\n    return S('no')\n"
    assert run(sub, kind="call", entry_point="f", tests=[Case(expected="yes")]).status is Status.FAIL


def test_patched_unittest_asserts_are_suspicious(run, same_server):
    code = "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\ndef f(x):\n    return -1\n"
    test = "import unittest\nunittest.TestCase().assertEqual(f(1), 2)\n"
    v = run(code, kind="assert", tests=[Case(code=test)])
    assert v.status is Status.SUSPICIOUS
    assert v.cases[0].status is Status.SUSPICIOUS  # a pass matrix built from cases does not count it


def test_tmp_is_wiped_between_tasks(run, same_server):
    plant = "import os\nfor d in ('/tmp', '/dev/shm'):\n    open(d + '/planted', 'w').write('x')\n    os.makedirs(d + '/sub/deep')\n    os.chmod(d + '/sub', 0)\nprint('ok')"
    assert run(plant, tests=[Case(expected="ok")]).status is Status.PASS
    v = run("import os\nprint(os.listdir('/tmp'), os.listdir('/dev/shm'))", tests=[Case(expected="[] []")])
    assert v.status is Status.PASS, v.cases[0].actual


def test_flags_and_leftover_output_do_not_reach_the_next_task(run, same_server):
    """stdout/stderr/results are pipes shared by every task of a fork-server: a task that sets
    O_NONBLOCK on them and leaves a writer behind must change nothing for the next task."""
    spoil = (
        "import fcntl, os\n"
        "for fd in (1, 2, 3):\n    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK | os.O_APPEND)\n"
        "parent = os.getpid()\n"
        "for _ in range(4):\n"
        "    if os.fork() == 0:\n"
        "        while os.getppid() == parent:\n            pass\n"  # write only once the task has ended
        "        while True:\n            try:\n                os.write(1, b'LEAK\\n' * 8000)\n"
        "            except OSError:\n                pass\n"
    )
    assert run(spoil).status in (Status.PASS, Status.OLE)  # OLE if the writers outran the final read
    big = "x" * 200_000  # over a pipe's 64 KiB: a non-blocking stdout would raise BlockingIOError
    v = run(f"print('{big}')", tests=[Case(expected=big)])
    assert v.status is Status.PASS, v.stderr[-300:]
    assert "LEAK" not in v.stdout


def test_growing_the_stdout_file_is_ole_and_the_next_task_starts_empty(run, same_server):
    """stdout is an in-memory file shared by the fork-server's tasks: a task that stretches it
    (ftruncate, no writes) is over the output cap, and the next task sees only its own output."""
    assert run("import os\nos.ftruncate(1, 8 << 20)").status is Status.OLE
    v = run("print('mine')", tests=[Case(expected="mine")])
    assert v.status is Status.PASS and v.stdout == "mine\n"


def test_a_new_process_group_does_not_escape(run):
    """setpgid(0, 0) is allowed (each task makes its own group that way); a descendant that uses it to
    leave the task's group is still killed: the monitor kills everything in the pid namespace."""
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setpgid(0, 0)\n    time.sleep(3600)\n"
        "print('parent done')\n"
    )
    t0 = time.monotonic()
    assert run(code, tests=[Case(expected="parent done")]).status is Status.PASS
    assert time.monotonic() - t0 < 2.0
    assert run("print(1)", tests=[Case(expected="1")]).status is Status.PASS


def test_a_locked_workdir_is_restored(run, same_server):
    assert (
        run("import os\nos.chmod('/tmp', 0)\nprint('ok')", tests=[Case(expected="ok")]).status is Status.PASS
    )
    v = run("open('/tmp/f', 'w').write('x')\nprint(open('/tmp/f').read())", tests=[Case(expected="x")])
    assert v.status is Status.PASS, v.stderr[-300:]


def test_a_task_cannot_reach_the_task_forked_after_it(run, same_server):
    """The next task is forked while this one runs (same uid). Lowering every other process's rlimits
    and priority must fail, and the next task starts with its own limits and niceness."""
    sabotage = (
        "import os, resource\n"
        "hits = 0\n"
        "for p in [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]:\n"
        "    for fn in (lambda: resource.prlimit(p, resource.RLIMIT_AS, (1 << 20, 1 << 20)),\n"
        "               lambda: os.setpriority(os.PRIO_PROCESS, p, 19),\n"
        "               lambda: os.sched_setaffinity(p, {0})):\n"
        "        try:\n            fn()\n            hits += 1\n        except OSError:\n            pass\n"
        "print(hits)\n"
    )
    assert run(sabotage, tests=[Case(expected="0")]).status is Status.PASS
    probe = "import os, resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20, os.getpriority(os.PRIO_PROCESS, 0))"
    v = run(probe, tests=[Case(expected=f"{LIMITS.memory_mb} 0")])
    assert v.status is Status.PASS, v.stdout


def _rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_rlimits_inside_match_limits(run):
    code = (
        "import resource as r\n"
        "print([r.getrlimit(x) for x in (r.RLIMIT_AS, r.RLIMIT_CPU, r.RLIMIT_FSIZE, r.RLIMIT_NOFILE, r.RLIMIT_NPROC, r.RLIMIT_CORE)])"
    )
    v = run(code)
    mb = 1 << 20
    want = [(512 * mb,) * 2, (1, 2), (16 * mb,) * 2, (64, 64), (32, 32), (0, 0)]
    assert v.status is Status.PASS and v.stdout.strip() == str(want)


def test_jobs_on_other_workers_do_not_share_a_uid(sb):
    with type(sb)(LIMITS, workers=2) as two:
        assert len(set(two.uids) | set(sb.uids)) == 3
        code = "import os, time\ntime.sleep(0.3)\nprint(os.getuid())"
        vs = two.run([Job(code=code, kind="stdio", tests=[Case()]) for _ in range(2)])
        assert sorted(int(v.stdout) for v in vs) == sorted(two.uids)


def test_host_files_the_uid_could_reach_without_the_mount_namespace(run, sb, same_server):
    """Targets that ordinary permissions leave open to the sandbox's uid: a world-readable file and a
    world-writable directory outside the bound paths. Only the mount namespace keeps them out; the host
    side checks that they were, and that /tmp and /dev/shm writes stayed in the private tmpfs."""
    import shutil
    import subprocess
    import uuid

    tag = uuid.uuid4().hex[:8]
    readable, writable = Path(f"/var/tmp/af-canary-{tag}"), Path(f"/var/tmp/af-drop-{tag}")
    readable.mkdir(mode=0o755)
    (readable / "secret.txt").write_text(f"SECRET-{tag}")
    os.chmod(readable / "secret.txt", 0o644)
    writable.mkdir()
    os.chmod(writable, 0o1777)
    try:
        uid = sb._workers[0].uid
        if uid is not None:  # without namespaces, the worker's uid reads and writes these
            as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            out = subprocess.run(
                [*as_uid, "cat", str(readable / "secret.txt")], capture_output=True, text=True
            )
            assert out.stdout == f"SECRET-{tag}"
            probe = writable / "probe"
            assert subprocess.run([*as_uid, "touch", str(probe)]).returncode == 0
            probe.unlink()
        code = (
            "import os\n"
            f"for p in ({str(readable / 'secret.txt')!r}, {str(readable)!r}):\n"
            "    try:\n        print(p, 'READ', open(p).read() if p.endswith('.txt') else os.listdir(p))\n"
            "    except OSError as e:\n        print(p, 'denied', type(e).__name__)\n"
            f"for p in ({str(writable / 'pwned')!r}, '/tmp/af-planted-{tag}', '/dev/shm/af-planted-{tag}'):\n"
            "    try:\n        open(p, 'w').write('pwned')\n        print(p, 'WROTE')\n"
            "    except OSError as e:\n        print(p, 'denied', type(e).__name__)\n"
        )
        v = run(code)
        assert v.status is Status.PASS, v.detail
        assert "READ" not in v.stdout and f"SECRET-{tag}" not in v.stdout
        assert v.stdout.count("denied FileNotFoundError") == 3, v.stdout  # not even there
        assert f"/tmp/af-planted-{tag} WROTE" in v.stdout  # inside: its own private tmpfs
        assert os.listdir(writable) == []
        assert not Path(f"/tmp/af-planted-{tag}").exists() and not Path(f"/dev/shm/af-planted-{tag}").exists()
    finally:
        shutil.rmtree(readable, ignore_errors=True)
        shutil.rmtree(writable, ignore_errors=True)
