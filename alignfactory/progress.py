"""Readable progress: one line per stage, updated as the driver writes each finished shard.

    generate   24/64 rows  1.9 rows/s  ETA 0:21  41.3 tok/s   3/8 shards
    filter     20 rows     1.6 rows/s  ETA 0:25               3/8 shards

On a terminal the block of stage lines is redrawn in place (ANSI: cursor up, clear line), at most
every `redraw_s`; otherwise (a log file, `ray job submit` output) a plain line per stage is printed
at most every `every_s` seconds and once when the stage ends. Rates count only this run's work: a
resumed run's reused shards are neither in the totals nor in the rates. ETA comes from shards
(rows per shard vary less than rows per second early on, when an engine is still loading).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field


@dataclass
class StageProgress:
    name: str
    total_rows: int | None  # None: not known yet (a stage after a filtering one)
    total_shards: int | None
    llm: bool
    start: float
    rows: int = 0
    shards: int = 0
    tokens_out: int = 0
    end: float | None = None
    last_print: float = field(default=float("-inf"))

    def line(self, now: float) -> str:
        elapsed = max(1e-9, (self.end or now) - self.start)
        rows = f"{self.rows}/{self.total_rows} rows" if self.total_rows is not None else f"{self.rows} rows"
        parts = [f"{self.name:<14}", f"{rows:<14}", f"{self.rows / elapsed:6.1f} rows/s"]
        if self.end is not None:
            parts.append(f"done in {_clock(elapsed)}")
        elif self.shards and self.total_shards:
            left = (self.total_shards - self.shards) * elapsed / self.shards  # seconds, at this rate
            parts.append(f"ETA {_clock(left)}")
        else:
            parts.append("ETA -")
        if self.llm:
            parts.append(f"{self.tokens_out / elapsed:7.1f} tok/s")
        if self.total_shards is not None:
            parts.append(f"{self.shards}/{self.total_shards} shards")
        return "  ".join(parts)


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(
        self, stream=None, tty: bool | None = None, every_s: float = 10.0, redraw_s: float = 0.2, clock=None
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s, self.redraw_s = every_s, redraw_s
        self.clock = clock or time.monotonic
        self.stages: dict[str, StageProgress] = {}
        self.drawn = 0  # lines of the in-place block on the terminal
        self.last_draw = float("-inf")

    def start(self, name: str, total_rows: int | None = None, total_shards: int | None = None, llm=False):
        self.stages[name] = StageProgress(name, total_rows, total_shards, llm, self.clock())
        self._show(name, force=True)

    def update(self, name: str, rows: int, tokens_out: int = 0, shards: int = 1) -> None:
        """A shard of `rows` input rows finished in stage `name` (its tokens_out counted for tok/s)."""
        st = self.stages[name]
        st.rows += rows
        st.tokens_out += tokens_out
        st.shards += shards
        self._show(name)

    def finish(self, name: str) -> None:
        st = self.stages[name]
        st.end = self.clock()
        self._show(name, force=True)

    def _show(self, name: str, force: bool = False) -> None:
        now = self.clock()
        if self.tty:
            if force or now - self.last_draw >= self.redraw_s:
                self._redraw(now)
            return
        st = self.stages[name]
        if force or now - st.last_print >= self.every_s:
            st.last_print = now
            self.stream.write(st.line(now) + "\n")
            self.stream.flush()

    def _redraw(self, now: float) -> None:
        """Move up over the block drawn last time and write every stage's line again."""
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        lines = [f"\x1b[2K{st.line(now)}" for st in self.stages.values()]
        self.stream.write(up + "\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn, self.last_draw = len(lines), now

    def log_line(self, text: str) -> None:
        """Print a line above the in-place block without breaking it (terminal) or plainly."""
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0
        self.stream.write(text + "\n")
        if self.tty and self.stages:
            self._redraw(self.clock())
        self.stream.flush()

    def handler(self, fmt: logging.Formatter | None = None) -> logging.Handler:
        """A logging handler that prints records above the in-place block (use it for the CLI's logs)."""
        return _LogHandler(self, fmt)


class _LogHandler(logging.Handler):
    def __init__(self, progress: Progress, fmt: logging.Formatter | None):
        super().__init__()
        self.progress = progress
        if fmt is not None:
            self.setFormatter(fmt)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.log_line(self.format(record))
        except Exception:
            self.handleError(record)


class Silent(Progress):
    """Progress that prints nothing (-q, or tests that read stderr)."""

    def _show(self, name: str, force: bool = False) -> None:
        pass

    def log_line(self, text: str) -> None:
        self.stream.write(text + "\n")
