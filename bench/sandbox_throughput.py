"""Sandbox throughput per worker vs a plain `subprocess.run([python, file])` per execution.

    python bench/sandbox_throughput.py [--rounds 5] [--seconds 2]

First proves every isolation layer is on (the selftest battery must pass, and the fork-server argv
must carry every flag), then measures in interleaved rounds (sandbox, baseline, sandbox, ...) so
that load from other processes on the machine hits both sides alike, and reports the median round of
each side (a VM's neighbours only ever slow a round down; the median ignores the worst bursts).
Prints, e.g.:

    trivial: sandbox=XXX/s baseline=YY/s ratio=Z.Zx  (rounds: sandbox A..B/s, baseline C..D/s)
    10-case solution: sandbox=XXX/s baseline=YY/s ratio=Z.Zx  (...)

The baseline runs the same interpreter the sandbox uses, with no isolation at all. A second
baseline, `python -I -S` (no site import), bounds any design that execs a fresh interpreter per task.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.5, help="per side per round")
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
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
