"""A program under test must not speak for its own results.

Each program below knows how the harness works: the results descriptor (fd 3), its old framing
(length + JSON) and the new one (length + tag + marshal), the expected values of the cases, and the
runner's internals. None of them may come back PASS. Before the guard (forkserver.install_guard), the
frames written at load time made an assert job with no function at all PASS.
"""

import struct

import pytest

from sandbox import Case, Job, Status
from sandbox.harness import _requests
from sandbox.limits import Limits

CALL = dict(kind="call", entry_point="f", tests=[Case(args=[1], expected=2), Case(args=[2], expected=4)])
ASSERT = dict(kind="assert", tests=[Case(code="assert f(1) == 2"), Case(code="assert f(2) == 4")])
STDIO = dict(kind="stdio", tests=[Case(stdin="1", expected="2")])
KINDS = {"call": CALL, "assert": ASSERT, "stdio": STDIO}

# Names as written, or built at run time so that no static check can see them.
PLAIN = "import os, struct, json, marshal\nWRITE, EXIT, FD = os.write, os._exit, 3\n"
OBFUSCATED = (
    "m = __import__(''.join(['o', 's']))\n"
    "WRITE, EXIT = getattr(m, 'wr' + 'ite'), getattr(m, '_' + 'e' + 'xit')\n"
    "FD = len('abc')\n"
    "struct, json, marshal = (__import__(n[::-1]) for n in ('tcurts', 'nosj', 'lahsram'))\n"
)
# Every case claimed passed: first in the old framing (length + JSON, then its "done" marker), then in
# the new one (length + a guessed tag + marshal).
FORGE = (
    "def forge(n=2, values=(2, 4)):\n"
    "    old = new = b''\n"
    "    for i in range(n):\n"
    "        body = json.dumps({'i': i, 'ok': True, 'v': values[i], 't': 0.0}).encode()\n"
    "        old += struct.pack('>I', len(body)) + body\n"
    "        p = marshal.dumps(('case', i, 'ok', 0.0))\n"
    "        new += struct.pack('>I', 16 + len(p)) + bytes(16) + p\n"
    "    done = json.dumps({'done': True}).encode()\n"
    "    WRITE(FD, old + struct.pack('>I', len(done)) + done + new)\n"
)
AT_LOAD = "forge()\nprint(2)\nEXIT(0)\n"  # never defines f
INSIDE = "def f(x):\n    forge()\n    print(2)\n    EXIT(0)\nf(1) if __name__ == '__main__' else None\n"
# A thread that waits for the last case, then forges while the runner finishes (f itself is wrong). The
# order is fixed, not timed: the last case (or the stdio program) goes on only once the thread has put a
# forged frame on the channel, so however loaded the machine, forged frames are there to be caught. The
# waits have no timeout: a broken handshake is the sandbox's wall-clock kill (TLE), never a silent pass.
THREAD = (
    "import threading\n"
    "last, forged = threading.Event(), threading.Event()\n"
    "def late():\n"
    "    last.wait()\n"
    "    forge()\n"
    "    forged.set()\n"
    "    for _ in range(49):\n"
    "        forge()\n"
    "threading.Thread(target=late, daemon=True).start()\n"
    "def f(x):\n"
    "    if x == 2:\n"
    "        last.set()\n"
    "        forged.wait()\n"
    "    return -1\n"
    "if __name__ == '__main__':\n"
    "    print(2)\n"
    "    last.set()\n"
    "    forged.wait()\n"
)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("names", ["plain", "obfuscated"])
@pytest.mark.parametrize("moment", ["load", "inside", "thread"])
def test_forged_frames_are_suspicious_never_pass(run, kind, names, moment):
    code = (
        (PLAIN if names == "plain" else OBFUSCATED)
        + FORGE
        + {"load": AT_LOAD, "inside": INSIDE, "thread": THREAD}[moment]
    )
    v = run(code, **KINDS[kind])
    assert v.status is Status.SUSPICIOUS, (v.status, v.detail, v.stderr[-300:])
    assert "results channel" in v.detail
    assert not any(c.status is Status.PASS for c in v.cases)


def test_an_honest_program_still_passes_in_every_kind(run):
    assert run("def f(x):\n    return 2 * x\n", **CALL).status is Status.PASS
    assert run("def f(x):\n    return 2 * x\n", **ASSERT).status is Status.PASS
    assert run("print(2 * int(input()))", **STDIO).status is Status.PASS


# ---- reaching for the runner's key or its frames instead of writing bytes --------------------------

GOOD_F = "\ndef f(x):\n    return 2 * x\n"  # right answers: only the attempt can make these not PASS


def _attempt(body: str) -> str:
    return (
        "import sys\ntry:\n"
        + "".join(f"    {line}\n" for line in body.splitlines())
        + ("    print('REACHED')\nexcept Exception as e:\n    print('refused', type(e).__name__, e)\n")
    )


ATTEMPTS = {
    "audit_emit": "getattr(sys, 'au' + 'dit')('sand' + 'box.emit', ('case', 0, 'ok', 0.0))",
    "audit_rearm": "sys.audit('sandbox.arm', bytes(32), 1 << 20, True)",
    "audit_end": "sys.audit('sandbox.end', 0)",
    "gc_scan": "import gc\n[o for o in gc.get_objects() if 'blake2' in type(o).__name__]",
    "gc_referrers": "import gc\ngc.get_referrers(sys.audit)",
    "ctypes_memory": "import ctypes\nctypes.string_at(id(sys), 64)",
    "ctypes_libc": "import ctypes\nctypes.CDLL(None)",
    "settrace": "sys.settrace(lambda *a: None)",
    "setprofile": "sys.setprofile(lambda *a: None)",
    "other_threads_frames": "sys._current_frames()",
    "rerun_the_runner": (
        "z = next(c for c in object.__subclasses__() if c.__name__ == 'Zygote')\n"
        "rt = z.__init__.__globals__['run_task']\n"
        "rt({'mode': 'assert', 'code': '', 'cases': [{'code': 'pass'}] * 2, 'limits': {'result_bytes': 1 << 20}},"
        " bytearray(64))"
    ),
    "swap_encode_code": (
        "z = next(c for c in object.__subclasses__() if c.__name__ == 'Zygote')\n"
        "z.__init__.__globals__['encode'].__code__ = (lambda v, _depth=0: 4).__code__"
    ),
}


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_reaching_for_the_channel_is_refused_and_flagged(run, attempt):
    code = _attempt(ATTEMPTS[attempt]) + GOOD_F
    for kind in ("call", "assert"):
        v = run(code, **KINDS[kind])
        assert v.status is Status.SUSPICIOUS, (attempt, kind, v.status, v.detail, v.stdout, v.stderr[-300:])
        assert "denies" in v.detail and "REACHED" not in v.stdout, (v.detail, v.stdout)


def test_the_runner_frame_shows_state_but_cannot_change_it(run):
    """sys._getframe stays allowed (ordinary libraries use it); through CPython 3.12 f_locals is a
    snapshot, so writing a forged record into the runner's frame changes nothing."""
    code = (
        "import sys\n"
        "def f(x):\n"
        "    fr = sys._getframe(1)\n"
        "    loc = fr.f_locals\n"
        "    loc['rec'] = ('case', 0, 'ok', 0.0)\n"
        "    loc['mode'] = 'assert'\n"
        "    print('saw', sorted(k for k in ('cases', 'key', 'body') if k in loc))\n"
        "    return -1\n"
    )
    v = run(code, **CALL)
    assert v.status is Status.FAIL and v.pass_vector == [False, False]
    assert "saw ['body', 'cases']" in v.stdout  # the key itself is gone: `body` holds zeros there
    v = run(code, **ASSERT)
    assert v.status is Status.FAIL


def test_own_memory_is_unreadable(run):
    code = (
        "for p in ('/proc/self/mem', '/proc/self/environ'):\n"
        "    try:\n        open(p, 'rb').read(16)\n        print(p, 'READ')\n"
        "    except OSError as e:\n        print(p, 'denied', type(e).__name__)\n"
    )
    v = run(code)
    assert v.status is Status.PASS
    assert "READ" not in v.stdout and v.stdout.count("denied PermissionError") == 2, v.stdout


def test_replayed_frames_fail_authentication(run):
    """The task can read the results file (it shares it); copying the runner's earlier, authentic
    frames onto the end does not authenticate: each tag covers the frame's number."""
    code = (
        "import os\n"
        "def f(x):\n"
        "    if x == 2:\n"
        "        os.write(3, os.pread(3, 1 << 16, 1))\n"  # byte 0 is the setup marker
        "    return 2 * x if x == 1 else -1\n"
    )
    v = run(code, **CALL)
    assert v.status is Status.SUSPICIOUS and "authentication" in v.detail, v.detail


# Truncate the channel to its setup byte, erasing the runner's authentic record of case 0, and write
# forged frames in its place: every case passed, then the end marker; exit before the runner writes
# again. f is wrong on case 1, and only the frames' tags stand between this job and PASS: without the
# truncation the forged case 0 would follow the runner's own and the order check alone would catch it.
TRUNCATE_AND_FORGE = (
    "TRUNCATE = getattr(__import__('o' + 's'), 'f' + 'truncate')\n"
    "def frame(rec):\n"
    "    p = marshal.dumps(rec)\n"
    "    return struct.pack('>I', 16 + len(p)) + bytes(16) + p\n"
    "def f(x):\n"
    "    if x == 1:\n"
    "        return 2\n"
    "    TRUNCATE(FD, 1)\n"
    "    WRITE(FD, b''.join(frame(r) for r in RECORDS))\n"
    "    EXIT(0)\n"
)
FORGED_RECORDS = {
    "call": [("case", 0, "v", 2, 0.0), ("case", 1, "v", 4, 0.0), ("end", 2, 0, 0)],
    "assert": [("case", 0, "ok", 0.0), ("case", 1, "ok", 0.0), ("end", 2, 0, 0)],
}


@pytest.mark.parametrize("kind", FORGED_RECORDS)
@pytest.mark.parametrize("names", ["plain", "obfuscated"])
def test_truncating_the_channel_and_forging_in_its_place_never_passes(run, kind, names):
    preamble = PLAIN if names == "plain" else OBFUSCATED
    v = run(preamble + f"RECORDS = {FORGED_RECORDS[kind]!r}\n" + TRUNCATE_AND_FORGE, **KINDS[kind])
    assert v.status is Status.SUSPICIOUS, (v.status, v.detail, v.stderr[-300:])
    # frame 0 is a forged one: the truncation did erase the runner's case 0
    assert "frame 0: not written by the runner (authentication failed)" in v.detail, v.detail
    assert not any(c.status is Status.PASS for c in v.cases)


# ---- what enters the sandbox --------------------------------------------------------------------

EXPECTED_MARKERS = ["EXPECTED-7d1f", 918273645, 3.14159265, ["nested", "EXPECTED-list-9c2e"]]


def _jobs() -> list[Job]:
    call = Job(
        code="def f(x):\n    return x\n",
        kind="call",
        entry_point="f",
        tests=[Case(args=[i], expected=e) for i, e in enumerate(EXPECTED_MARKERS)],
    )
    stdio = Job(
        code="print(input())", kind="stdio", tests=[Case(stdin="in", expected="EXPECTED-stdout-4b8a")]
    )
    return [call, stdio]


def _leaks(frame: bytes) -> list:
    text = frame.decode("utf-8", "replace")
    found = [m for m in ("EXPECTED-7d1f", "EXPECTED-list-9c2e", "EXPECTED-stdout-4b8a") if m in text]
    return found + [n for n in ("918273645", "3.14159265") if n in text]


def test_requests_never_carry_expected_values():
    for job in _jobs():
        for req in _requests(job, Limits()):
            assert _leaks(struct.pack(">I", 0) + repr(req).encode()) == []


def test_frames_sent_to_a_real_sandbox_carry_no_expected_value(sb, monkeypatch):
    sent: list[bytes] = []
    worker = sb._workers[0]
    real_send = worker.send
    monkeypatch.setattr(worker, "send", lambda frame: (sent.append(frame), real_send(frame))[1])
    verdicts = sb.run(_jobs())
    assert [v.status for v in verdicts] == [Status.FAIL, Status.FAIL]  # the answers are not the markers
    assert len(sent) == 2 and all(_leaks(f) == [] for f in sent)
