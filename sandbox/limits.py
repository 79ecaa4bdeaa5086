"""Resource limits for one execution (one process tree inside the sandbox).

A function-call or assert job is one execution (all its cases share the limits); a stdin/stdout job
is one execution per case.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall clock per execution; the fork-server kills the process group after it
    cpu_s: float | None = None  # RLIMIT_CPU soft limit (s); None -> ceil(wall_s). Hard = soft + 1 (SIGKILL)
    memory_mb: int = 512  # RLIMIT_AS (MiB). 512 MiB stops CPython at ~14 threads.
    file_size_mb: int = 16  # RLIMIT_FSIZE (MiB): largest file a task may write
    tmp_mb: int = 64  # size of the private /tmp tmpfs (MiB), wiped after each execution
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # RLIMIT_NPROC for the worker's uid: counts bwrap and the fork-server too (5)
    output_bytes: int = 1 << 20  # cap on captured stdout, and separately on stderr; over it -> OLE
    result_bytes: int = 4 << 20  # cap on the framed return values of all function-call cases together

    def cpu_soft_hard(self) -> tuple[int, int]:
        """RLIMIT_CPU pair in whole seconds; soft < hard so the soft limit sends SIGXCPU first."""
        soft = max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.wall_s))
        return soft, soft + 1

    def to_wire(self) -> dict:
        """What the fork-server needs, in the units it applies (bytes, seconds)."""
        soft, hard = self.cpu_soft_hard()
        return {
            "wall_s": float(self.wall_s),
            "cpu": [soft, hard],
            "as_bytes": self.memory_mb << 20,
            "fsize_bytes": self.file_size_mb << 20,
            "nofile": self.open_files,
            "nproc": self.processes,
            "output_bytes": self.output_bytes,
            "result_bytes": self.result_bytes,
        }

    def to_dict(self) -> dict:
        return asdict(self)
