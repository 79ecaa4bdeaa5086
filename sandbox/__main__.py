"""python -m sandbox selftest | python -m sandbox run FILE.py [--stdin FILE] [--wall S] [--memory MB]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("selftest", help="adversarial checks of every isolation layer on this node")
    st.add_argument("--wall", type=float, default=1.0, help="wall limit per check (s)")
    r = sub.add_parser("run", help="run a Python file in the sandbox; print its output and the status")
    r.add_argument("file")
    r.add_argument("--stdin", help="file fed on stdin")
    r.add_argument("--wall", type=float, default=10.0, help="wall-clock limit (s)")
    r.add_argument("--memory", type=int, default=512, help="address-space limit (MiB)")
    r.add_argument("--unsafe", action="store_true", help="run without isolation if it is unavailable")
    args = p.parse_args(argv)

    from sandbox import Case, Job, Limits, Sandbox, SandboxUnavailable, Status

    try:
        if args.cmd == "selftest":
            from sandbox.selftest import run_selftest

            results = run_selftest(Limits(wall_s=args.wall, cpu_s=args.wall))
            failed = [k for k, ok in results.items() if not ok]
            print(
                f"{len(results) - len(failed)}/{len(results)} isolation properties hold"
                + (f"; FAILED: {failed}" if failed else "")
            )
            return 1 if failed else 0
        code = Path(args.file).read_text(encoding="utf-8")
        stdin = Path(args.stdin).read_text(encoding="utf-8") if args.stdin else ""
        with Sandbox(Limits(wall_s=args.wall, memory_mb=args.memory), allow_unsafe=args.unsafe) as sb:
            v = sb.run([Job(code=code, kind="stdio", tests=[Case(stdin=stdin)])])[0]
    except SandboxUnavailable as e:
        print(f"sandbox unavailable: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(v.stdout)
    sys.stderr.write(v.stderr)
    print(f"[sandbox] {v.status.value}: {v.detail} ({v.time_s:.3f}s)", file=sys.stderr)
    return 0 if v.status is Status.PASS else 1


if __name__ == "__main__":
    sys.exit(main())
