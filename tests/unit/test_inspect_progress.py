"""alignfactory.progress: plain periodic lines off a terminal, one line per stage redrawn in place on one."""

import io
import logging

from alignfactory.progress import Progress, Silent


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_lines_are_periodic_and_carry_rate_eta_tokens():
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, every_s=10.0, clock=clock)
    p.start("generate", total_rows=40, total_shards=4, llm=True)
    clock.t += 20
    p.update("generate", rows=10, tokens_out=400)  # 10 s since the start line: printed
    clock.t += 5
    p.update("generate", rows=10, tokens_out=400)  # 5 s since the last line: not printed
    clock.t += 15
    p.update("generate", rows=10, tokens_out=400)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "\x1b" not in out.getvalue()  # no escape codes in a log file
    first = lines[1]
    assert "10/40 rows" in first and "0.5 rows/s" in first and "20.0 tok/s" in first and "1/4 shards" in first
    assert "ETA 1:00" in first  # 3 shards left at 20 s each
    assert "30/40 rows" in lines[2] and "ETA 0:13" in lines[2]  # 1 shard left at 40/3 s each
    clock.t += 10
    p.update("generate", rows=10, tokens_out=400)
    p.finish("generate")
    assert lines != out.getvalue().splitlines()
    assert "done in 0:50" in out.getvalue().splitlines()[-1]


def test_cpu_stage_shows_no_tokens_and_unknown_total():
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, every_s=0, clock=clock)
    p.start("filter", total_rows=None, total_shards=2)
    clock.t += 4
    p.update("filter", rows=8)
    line = out.getvalue().splitlines()[-1]
    assert "8 rows" in line and "/" not in line.split("rows")[0] and "tok/s" not in line
    assert "2.0 rows/s" in line


def test_terminal_redraws_one_line_per_stage_in_place():
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=True, redraw_s=0.0, clock=clock)
    p.start("generate", total_rows=16, total_shards=2, llm=True)
    p.start("filter", total_shards=2)
    clock.t += 2
    p.update("generate", rows=8, tokens_out=100)
    text = out.getvalue()
    # the third draw moves up over the two stage lines the second one wrote, then rewrites both
    last = text.rsplit("\x1b[2F", 1)[1]
    assert last.count("\x1b[2K") == 2 and "generate" in last and "filter" in last
    assert "8/16 rows" in last


def test_logs_print_above_the_block():
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=True, redraw_s=0.0, clock=clock)
    p.start("generate", total_rows=4, total_shards=1)
    log = logging.getLogger("test_progress")
    log.propagate = False
    log.addHandler(p.handler(logging.Formatter("%(message)s")))
    log.warning("a warning")
    tail = out.getvalue().split("\x1b[1F\x1b[J", 1)[1]  # block erased, message, block redrawn
    assert tail.startswith("a warning\n") and "generate" in tail.split("\n", 1)[1]


def test_silent_prints_only_logs():
    out = io.StringIO()
    s = Silent(out, tty=False)
    s.start("generate", total_rows=4, total_shards=1)
    s.update("generate", rows=4)
    s.finish("generate")
    assert out.getvalue() == ""
    s.log_line("kept")
    assert out.getvalue() == "kept\n"
