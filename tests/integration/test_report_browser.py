"""`alignfactory report RUN_DIR` opened in a real browser: Debian's chromium-headless-shell driven by
playwright (installed by scripts/setup.sh test; nothing is installed here). The page must load with
no console errors or page errors, every plot the run has data for must be present and drawn (a
decoded PNG whose pixels are not all one colour), and a full-page screenshot is kept under
tests/artifacts/ (ignored by git) for a person to look at."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignfactory import inspect, report
from tests.integration.conftest import REPO
from tests.integration.test_notebooks import real_run
from tests.unit.test_inspect import make_run

CHROMIUM = Path("/usr/lib/chromium/chromium-headless-shell")
MAIN_JOB_VIEWS = {"cooccurrence", "evolution", "lengths", "map", "rejections", "scores", "tags"}
ARTIFACTS = REPO / "tests" / "artifacts"

# Per <img class="plot">: decoded size, and how many distinct colours a 64x64 sample of it has.
PLOT_PIXELS = """() => Array.from(document.querySelectorAll('img.plot')).map(img => {
  const c = document.createElement('canvas'); c.width = 64; c.height = 64;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0, 64, 64);
  const px = g.getImageData(0, 0, 64, 64).data; const colours = new Set();
  for (let i = 0; i < px.length; i += 4) colours.add(px[i] << 16 | px[i + 1] << 8 | px[i + 2]);
  return {view: img.dataset.view, w: img.naturalWidth, h: img.naturalHeight, ok: img.complete,
          colours: colours.size};
})"""


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, request):
    return real_run("sft", tmp_path_factory, request)


@pytest.fixture(scope="module")
def rich_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("synthetic") / "rich")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: scripts/setup.sh test installs chromium-headless-shell")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


def open_report(browser, path: Path, shot: str) -> tuple[list, list, object]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(path.as_uri(), wait_until="load")
    plots = page.evaluate(PLOT_PIXELS)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    print(f"screenshot: {ARTIFACTS / shot}")
    return problems, plots, page


def expected_views(run_dir: Path) -> set[str]:
    lacks = inspect.missing(run_dir)
    return {anchor for anchor, _, _, needs in report.VIEWS if needs and needs not in lacks}


@pytest.mark.slow
def test_report_of_a_real_run_in_chromium(browser, sft_run):
    # the subcommand, as a user types it: the venv's `alignfactory` script, a path relative to the
    # directory it runs in
    done = subprocess.run(
        [str(Path(sys.executable).parent / "alignfactory"), "report", os.path.relpath(sft_run, REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    path = (REPO / done.stdout.strip()).resolve()
    assert path == (sft_run / "report.html").resolve()
    assert report.LINK in (sft_run / "README.md").read_text()

    problems, plots, page = open_report(browser, path, "report_sft.png")
    assert problems == []
    want = expected_views(sft_run)
    # pinned, not only derived from inspect.missing() on the same run (a view that loses its data
    # would drop out of both): the main job at --limit 16 tags, selects, evolves, judges and
    # exports; its 16 lines hold no duplicate, it runs no code, and the 135M model makes no pair
    assert want == MAIN_JOB_VIEWS, (sorted(want), inspect.missing(sft_run))
    assert {p["view"] for p in plots} == want
    for p in plots:
        assert p["ok"] and p["w"] > 100 and p["h"] > 100 and p["colours"] > 2, p
    # views without data say so in one line instead of an empty plot
    for anchor in {a for a, _, _, needs in report.VIEWS if needs} - want:
        note = page.locator(f"section#{anchor} p.note")
        assert note.count() == 1 and note.inner_text().strip(), anchor
    assert page.locator("section").count() == len(report.VIEWS)
    assert "this view failed" not in page.content()
    page.close()


@pytest.mark.slow
def test_report_of_a_real_code_run_shows_its_sandbox_verdicts(browser, tmp_path_factory, request):
    """The exec_feedback branch: a real code_data run (the session's shared one) has sandbox
    verdicts, which the report draws (view "verifiers"); its pass matrices are what inspect.verdicts
    reads."""
    code_run = real_run("code", tmp_path_factory, request)
    verdicts = inspect.verdicts(code_run)
    assert len(verdicts) == 4 and set(verdicts["stage"]) == {"exec_feedback"}  # 2 tasks x 2 solutions
    assert set(verdicts["what"]) == {"solution"} and not verdicts["passed"].all()  # one() cannot pass
    path = report.write(code_run)
    problems, plots, page = open_report(browser, path, "report_code.png")
    assert problems == []
    drawn = {p["view"] for p in plots}
    # the sandbox verdicts view is drawn; every drawn view has its data (the prompt map of 2 rows may
    # say in a note that it has too few points to draw)
    assert "verifiers" in drawn and drawn <= expected_views(code_run)
    for p in plots:
        assert p["ok"] and p["w"] > 100 and p["h"] > 50 and p["colours"] > 2, (
            p
        )  # 1 rejection: a short bar chart
    page.close()


@pytest.mark.slow
def test_report_with_every_view_in_chromium(browser, rich_run):
    path = report.write(rich_run)
    problems, plots, page = open_report(browser, path, "report_synthetic.png")
    assert problems == []
    assert {p["view"] for p in plots} == {a for a, _, _, needs in report.VIEWS if needs}
    for p in plots:
        assert p["ok"] and p["w"] > 100 and p["h"] > 100 and p["colours"] > 2, p
    for anchor in {a for a, _, _, needs in report.VIEWS if needs}:  # no plotting view lacks its data
        assert page.locator(f"section#{anchor} p.note").count() == 0, anchor
    page.close()
