"""A short adversarial battery, run on this node: one line per isolation property.

Each check is a program run in the sandbox plus a predicate on its verdict (and on the host after).
`python -m sandbox selftest` prints PASS/FAIL per property and exits 1 if any fails; the throughput
bench runs it first so that its numbers are only reported with every layer on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.harness import IDLE_PROCESSES, Sandbox, settled_processes
from sandbox.jobs import Case, Job
from sandbox.limits import Limits
from sandbox.verdicts import Status, Verdict


@dataclass
class Check:
    name: str
    code: str
    ok: Callable[[Verdict], bool]
    probe: bool = False  # uses ctypes to reach the kernel layer under the results guard


def _stdout_is(expected: str) -> Callable[[Verdict], bool]:
    return lambda v: v.status is Status.PASS and v.stdout.strip() == expected


PROBE_DENIED = """
import os, socket, ctypes, fcntl, resource
def denied(fn):
    try:
        fn()
    except OSError:
        return True
    return False
libc = ctypes.CDLL(None, use_errno=True)
print(all([
    denied(lambda: os.kill(1, 0)), denied(lambda: os.kill(os.getppid(), 9)), denied(lambda: os.killpg(os.getpgid(0), 9)),
    denied(os.setsid), denied(lambda: os.setpgid(0, os.getppid())), denied(lambda: os.setpgid(os.getpid(), 0)),
    denied(lambda: fcntl.fcntl(1, fcntl.F_SETOWN, os.getppid())),
    denied(lambda: resource.prlimit(os.getppid(), resource.RLIMIT_NPROC, (0, 0))),
    denied(lambda: os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)), denied(lambda: os.setpriority(os.PRIO_USER, 0, 19)),
    denied(lambda: os.sched_setaffinity(os.getppid(), {0})),
    denied(lambda: os.unshare(os.CLONE_NEWNS)) if hasattr(os, "unshare") else True,
    libc.ptrace(0, 0, 0, 0) == -1, libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == -1,
    libc.shmget(0, 4096, 0o1600) == -1, libc.msgget(0, 0o1600) == -1,
]))
"""

FORGE_FRAMES = """
import os, struct, json
body = json.dumps({"i": 0, "ok": True}).encode()
os.write(3, struct.pack(">I", len(body)) + body + struct.pack(">I", 16 + len(body)) + bytes(16) + body)
print("forged")
"""

CHECKS = [
    Check(
        "runs as an unprivileged uid",
        "import os; print(os.getuid() != 0 and os.getgid() != 0)",
        _stdout_is("True"),
    ),
    Check(
        "no capabilities, no_new_privs, seccomp filter active",
        "s = open('/proc/self/status').read()\n"
        "f = dict(l.split(':', 1) for l in s.splitlines())\n"
        "print(int(f['CapEff'], 16) == 0 and int(f['CapPrm'], 16) == 0 and f['NoNewPrivs'].strip() == '1' and f['Seccomp'].strip() == '2')",
        _stdout_is("True"),
    ),
    Check(
        "kill, ptrace, setsid, other processes' groups/rlimits/priority, F_SETOWN, SysV IPC, unshare, mount denied",
        PROBE_DENIED,
        _stdout_is("True"),
        probe=True,
    ),
    Check(
        "network blocked (AF_INET, AF_INET6, AF_NETLINK, AF_PACKET sockets; DNS)",
        "import socket\nok = []\nfor fam in (2, 10, 16, 17):\n    try:\n        socket.socket(fam, socket.SOCK_DGRAM if fam == 16 else socket.SOCK_STREAM)\n        ok.append(False)\n"
        "    except OSError:\n        ok.append(True)\ntry:\n    socket.getaddrinfo('example.com', 80)\n    ok.append(False)\nexcept OSError:\n    ok.append(True)\nprint(all(ok))",
        _stdout_is("True"),
    ),
    Check(
        "filesystem read-only outside /tmp; no /etc, /home, /root, host $HOME",
        "import os\nbad = []\nfor p in ('/usr/x', '/x', '/etc/x', '/dev/x', '/root/x', '/home/x'):\n    try:\n        open(p, 'w').write('x'); bad.append(p)\n"
        "    except OSError:\n        pass\nprint(not bad and not any(os.path.exists(p) for p in ('/etc/shadow', '/etc/passwd', '/root', '/home')))",
        _stdout_is("True"),
    ),
    Check(
        "environment cleared (also bwrap's /proc/1/environ)",
        "import os\nenv = open('/proc/1/environ', 'rb').read() if os.access('/proc/1/environ', os.R_OK) else b''\n"
        "print(set(os.environ) <= {'PATH', 'HOME', 'LANG', 'PWD'} and b'SANDBOX_SELFTEST_SECRET' not in env)",
        _stdout_is("True"),
    ),
    Check(
        "wall-clock limit (sleep) -> TLE", "import time; time.sleep(3600)", lambda v: v.status is Status.TLE
    ),
    Check(
        "CPU limit (busy loop ignoring SIGXCPU/SIGTERM/SIGALRM) -> TLE",
        "import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGALRM):\n    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
        lambda v: v.status is Status.TLE,
    ),
    Check("memory limit -> MLE", "x = bytearray(8 << 30)", lambda v: v.status is Status.MLE),
    Check(
        "results channel: frames the program writes itself -> SUSPICIOUS",
        FORGE_FRAMES,
        lambda v: v.status is Status.SUSPICIOUS and "authentication" in v.detail,
    ),
    Check(
        "process limit (fork bomb) -> contained",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        lambda v: v.status in (Status.TLE, Status.ERROR),
    ),
    Check(
        "output cap -> OLE",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
        lambda v: v.status is Status.OLE,
    ),
    Check(
        "file size limit -> ERROR",
        # 1 MiB at a time: one 200 MiB bytes object takes over a second to fault in on a loaded VM
        "f = open('/tmp/big', 'wb')\nfor _ in range(200):\n    f.write(b'x' * (1 << 20))",
        lambda v: v.status is Status.ERROR and "File too large" in v.stderr,
    ),
]


def run_selftest(limits: Limits | None = None, log: Callable[[str], None] = print) -> dict[str, bool]:
    """Run the battery; returns {property: passed}. Needs isolation (never runs unsafe)."""
    limits = limits or Limits(wall_s=1.0, cpu_s=1.0, memory_mb=512, output_bytes=1 << 20)
    os.environ["SANDBOX_SELFTEST_SECRET"] = "1"  # must not reach the sandbox
    results: dict[str, bool] = {}
    try:
        with Sandbox(limits, workers=1) as sb:
            for check in CHECKS:
                t0 = time.monotonic()
                v = sb.run([Job(code=check.code, kind="stdio", tests=[Case()], probe=check.probe)])[0]
                results[check.name] = ok = bool(check.ok(v))
                log(
                    f"{'PASS' if ok else 'FAIL'}  {check.name}  [{v.status.value}, {time.monotonic() - t0:.2f}s]"
                )
                if not ok:
                    log(f"      detail: {v.detail} stdout={v.stdout[:200]!r} stderr={v.stderr[-300:]!r}")
            results["private /tmp wiped between tasks"] = ok = _tmp_is_private(sb)
            log(f"{'PASS' if ok else 'FAIL'}  private /tmp wiped between tasks")
            worker = sb._workers[0]
            n = settled_processes(worker.uid)
            alive = worker.proc is not None and worker.proc.poll() is None and n <= IDLE_PROCESSES
            results["nothing left running; fork-server alive"] = alive
            log(
                f"{'PASS' if alive else 'FAIL'}  nothing left running; fork-server alive  [{n} processes of uid {worker.uid}, starts={worker.starts}]"
            )
    finally:
        os.environ.pop("SANDBOX_SELFTEST_SECRET", None)
    return results


def _tmp_is_private(sb: Sandbox) -> bool:
    plant = "open('/tmp/planted', 'w').write('secret'); open('/dev/shm/planted', 'w').write('secret'); print('ok')"
    look = "import os; print(os.listdir('/tmp') + os.listdir('/dev/shm'))"
    a, b = sb.run(
        [
            Job(code=plant, kind="stdio", tests=[Case(expected="ok")]),
            Job(code=look, kind="stdio", tests=[Case(expected="[]")]),
        ]
    )
    return a.status is Status.PASS and b.status is Status.PASS
