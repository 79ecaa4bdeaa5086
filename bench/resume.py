"""Re-running a finished spec must cost almost nothing: prints ratio = rerun time / first run time.

    python bench/resume.py [--limit 32]        target: ratio <= 0.10

Both runs are the CLI in a fresh process (`python -m alignfactory.run pipelines/sft_data.yaml`), so
each pays interpreter start and imports; the first also pays Ray start-up, model load and generation.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd, cwd=REPO, check=True, capture_output=True, env=os.environ | {"ALIGNFACTORY_PROGRESS": "0"}
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--spec", default="pipelines/sft_data.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "alignfactory.run",
            args.spec,
            "--limit",
            str(args.limit),
            "--output",
            f"{tmp}/run",
            "-q",
        ]
        first = timed(cmd)
        rerun = timed(cmd)
    print(f"first_s={first:.2f} rerun_s={rerun:.2f}")
    print(f"ratio={rerun / first:.3f}  (target <= 0.10)")


if __name__ == "__main__":
    main()
