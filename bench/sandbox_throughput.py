"""Sandbox throughput per worker vs a plain `subprocess.run([python, file])` per execution.

    python bench/sandbox_throughput.py [--rounds 5] [--seconds 2]

First proves every isolation layer is on (the selftest battery must pass, and the fork-server argv
must carry every flag), then measures in interleaved rounds (sandbox, baseline, sandbox, ...) so
that load from other processes on the machine hits both sides alike, and reports the median round of
each side (a VM's neighbours only ever slow a round down; the median ignores the worst bursts).
Prints, e.g.:

    trivial: sandbox=XXX/s baseline=YY/s ratio=Z.Zx  (rounds: sandbox A..B/s, baseline C..D/s)
      bare fork+exit=FFFF/s: sandbox = 0.NN of it (aim >= 1/3 = NNN/s); N.NNx the 451/s of before ...
    10-case solution: sandbox=XXX/s baseline=YY/s ratio=Z.Zx  (...)
    where an execution's time goes (profile mode, us, median of N executions): ...

The baseline runs the same interpreter the sandbox uses, with no isolation at all. A second
baseline, `python -I -S` (no site import), bounds any design that execs a fresh interpreter per task.
The bare fork+exit loop runs in that interpreter too (`-I -S`, as small as the zygote that forks tasks):
the floor of any fork-per-execution design. The breakdown comes from a separate Sandbox in profile mode
(monitor, zygote and task stamp the end of each phase; see forkserver.STAMPS), after the timed rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Case, Job, Limits, Sandbox, Status  # noqa: E402
from sandbox.isolation import server_argv  # noqa: E402
from sandbox.selftest import run_selftest  # noqa: E402

SOLUTION = """
def solve(nums, k):
    # k-th largest distinct sum of two elements
    sums = sorted({a + b for i, a in enumerate(nums) for b in nums[i + 1:]}, reverse=True)
    return sums[k - 1] if k <= len(sums) else -1
"""
CASES = [([i, i + 3, 2 * i, 7, 1, 9], 1 + i % 3) for i in range(10)]
BEFORE_CHANNEL = 451  # trivial executions/s per worker before the authenticated results channel (issue 18)
FORK_LOOP = """
import os, sys, time
n, t0, secs = 0, time.perf_counter(), float(sys.argv[1])
while time.perf_counter() - t0 < secs:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    n += 1
print(n, time.perf_counter() - t0)
"""
# (label, from stamp, to stamp) along one execution's critical path; "next." is the next execution's
# stamp (the response is written after this one's stamps are sent). See forkserver.STAMPS.
PHASES = (
    ("monitor: parse request, make key", "got", "handed"),
    ("hand it to the task forked ahead (write, wakeup)", "handed", "woke"),
    ("task isolation (setpgid, fds, rlimits)", "woke", "isolated"),
    ("arm the guard (key -> keyed BLAKE2b)", "isolated", "armed"),
    ("code + cases, result frames MAC'd", "armed", "ran"),
    ("flush, end frame", "ran", "exiting"),
    ("task exit, zygote reaps it", "exiting", "reaped"),
    ("zygote -> monitor wakeup", "reaped", "noticed"),
    ("sweep the pid namespace", "noticed", "swept"),
    ("read outputs, wipe workdirs", "swept", "collected"),
    ("verify result MACs", "collected", "verified"),
    ("encode + write the response", "verified", "next.answered_prev"),
    ("wait for the next request (harness)", "next.answered_prev", "next.got"),
)


def expected(nums, k):
    scope: dict = {}
    exec(SOLUTION, scope)
    return scope["solve"](nums, k)


def layers_on(sb: Sandbox) -> None:
    """Refuse to report numbers unless every isolation layer is on."""
    assert sb.isolated, "sandbox runs without isolation"
    argv = server_argv(sb.found, sb.uids[0], sb.limits.tmp_mb, 0)
    for flag in (
        "--unshare-all",
        "--cap-drop",
        "--clearenv",
        "--die-with-parent",
        "--new-session",
        "--disable-userns",
    ):
        assert flag in argv, flag
    assert argv[0].endswith("setpriv") and sb.uids[0] not in (0, None), "not launched as an unprivileged uid"
    assert sb.found["bpf"], "no seccomp filter"
    results = run_selftest(log=lambda line: None)
    failed = [k for k, ok in results.items() if not ok]
    assert not failed, f"selftest failed: {failed}"
    print(
        f"isolation: all {len(results)} selftest properties hold (bwrap, uid {sb.uids[0]}, seccomp, rlimits)"
    )


def timed_sandbox(sb: Sandbox, job: Job, seconds: float) -> tuple[int, float]:
    n, t0, batch = 0, time.perf_counter(), [job] * 50
    while time.perf_counter() - t0 < seconds:
        verdicts = sb.run(batch)
        assert all(v.status is Status.PASS for v in verdicts), verdicts[0].detail
        n += len(batch)
    return n, time.perf_counter() - t0


def timed_baseline(argv: list[str], seconds: float, want: str) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        assert out.strip() == want
        n += 1
    return n, time.perf_counter() - t0


def timed_fork(python: str, seconds: float) -> tuple[int, float]:
    out = subprocess.run([python, "-I", "-S", "-c", FORK_LOOP, str(seconds)], capture_output=True, check=True)
    n, t = out.stdout.split()
    return int(n), float(t)


def breakdown(job: Job, executions: int) -> None:
    """Where an execution's time goes: a fresh Sandbox in profile mode runs `job` `executions` times;
    prints the median of each phase (us) along the critical path, and time off it."""
    with Sandbox(Limits(wall_s=5), workers=1, profile=True) as sb:
        sb.run([job] * 50)  # warm
        cpu0 = time.process_time()
        for _ in range(executions // 50):
            sb.run([job] * 50)
        harness_us = (time.process_time() - cpu0) / (executions // 50 * 50) * 1e6
        runs = sb.profiles[50:]
    pairs = list(zip(runs, runs[1:], strict=False))  # (this execution, the next)

    def at(cur: dict, nxt: dict, stamp: str) -> int:
        return nxt[stamp[5:]] if stamp.startswith("next.") else cur[stamp]

    def us(a: str, b: str) -> float:
        return statistics.median((at(c, n, b) - at(c, n, a)) / 1e3 for c, n in pairs)

    def delta(k: str) -> float:
        return statistics.median((n[k] - c[k]) / 1e3 for c, n in pairs)

    parts = {label: us(a, b) for label, a, b in PHASES}
    cycle = us("got", "next.got")
    print(f"  where an execution's time goes (profile mode, us, median of {len(pairs)} executions):")
    for label, v in parts.items():
        print(f"    {label:52s} {v:7.0f}")
    print(f"    {'sum of the medians':52s} {sum(parts.values()):7.0f}  (cycle median {cycle:.0f} us)")
    guard = statistics.median(r["guard_ns"] / 1e3 for r in runs)
    calls = statistics.median(r["guard_calls"] for r in runs)
    fork = statistics.median(r["fork_ns"] / 1e3 for r in runs)
    print(f"    of which in the audit hook: {guard:.0f} us over {calls:.0f} calls (arm + MACs + events)")
    print(f"    off the path: fork of the next task {fork:.0f} us (zygote, while this one runs)")
    task = statistics.median(r["task_cpu_ns"] / 1e3 for r in runs)
    faults = statistics.median(r["task_minflt"] for r in runs)
    print(f"    page faults per task: {faults:.0f} (copy-on-write of the zygote's pages, mostly)")
    print(
        f"    CPU per execution: task {task:.0f} us, zygote {delta('zygote_cpu_ns'):.0f} us,"
        f" monitor {delta('monitor_cpu_ns'):.0f} us, harness {harness_us:.0f} us"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.5, help="per side per round")
    ap.add_argument("--profile", type=int, default=1000, help="executions in each breakdown (0: none)")
    args = ap.parse_args()

    with Sandbox(Limits(wall_s=5), workers=1) as sb, tempfile.TemporaryDirectory() as d:
        layers_on(sb)
        python = sb.found["python"]
        trivial_file = Path(d, "trivial.py")
        trivial_file.write_text("print('hello')\n")
        cases_file = Path(d, "cases.py")
        cases_file.write_text(SOLUTION + f"\nfor nums, k in {CASES!r}:\n    solve(nums, k)\nprint('done')\n")
        workloads = {
            "trivial": (
                Job(code="print('hello')", kind="stdio", tests=[Case(expected="hello")]),
                [python, str(trivial_file)],
                "hello",
            ),
            "10-case solution": (
                Job(
                    code=SOLUTION,
                    kind="call",
                    entry_point="solve",
                    tests=[Case(args=[n, k], expected=expected(n, k)) for n, k in CASES],
                ),
                [python, str(cases_file)],
                "done",
            ),
        }
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; python {python}")
        bound: list[float] = []
        forks: list[float] = []
        for name, (job, argv, want) in workloads.items():
            sb.run([job] * 20)  # warm
            s: list[float] = []
            b: list[float] = []
            for _ in range(args.rounds):
                for rates, (n, t) in (
                    (s, timed_sandbox(sb, job, args.seconds)),
                    (b, timed_baseline(argv, args.seconds, want)),
                ):
                    rates.append(n / t)
                if name == "trivial":
                    n, t = timed_baseline([python, "-I", "-S", str(trivial_file)], args.seconds / 2, want)
                    bound.append(n / t)
                    n, t = timed_fork(python, args.seconds / 2)
                    forks.append(n / t)
            rate_s, rate_b = statistics.median(s), statistics.median(b)
            print(
                f"{name}: sandbox={rate_s:.0f}/s baseline={rate_b:.0f}/s ratio={rate_s / rate_b:.1f}x"
                f"  (rounds: sandbox {min(s):.0f}..{max(s):.0f}/s, baseline {min(b):.0f}..{max(b):.0f}/s)"
            )
            if name == "trivial":
                met = rate_s >= 300 and rate_s >= 4 * rate_b
                print(
                    f"  (exec-per-task bound: `python -I -S` alone starts {statistics.median(bound):.0f}/s;"
                    f" targets >=300/s and >=4x: {'met' if met else 'NOT met'})"
                )
                fork = statistics.median(forks)
                print(
                    f"  bare fork+exit={fork:.0f}/s (rounds {min(forks):.0f}..{max(forks):.0f}/s): sandbox ="
                    f" {rate_s / fork:.2f} of it (aim >= 1/3 = {fork / 3:.0f}/s: {'met' if rate_s >= fork / 3 else 'NOT met'});"
                    f" {rate_s / BEFORE_CHANNEL:.2f}x the {BEFORE_CHANNEL}/s of before the results channel"
                )
            if args.profile:
                breakdown(job, args.profile)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
