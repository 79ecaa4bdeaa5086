"""The notebooks' run_dir (inspect.find_run): absolute as given; relative to the current directory when
it is there (papermill from the repo root); else relative to the repo (Jupyter opened in notebooks/,
papermill started in any other directory)."""

import json
from pathlib import Path

from alignfactory import inspect

REPO = Path(__file__).resolve().parents[2]


def test_relative_names_resolve_here_first_then_in_the_repo(tmp_path, monkeypatch):
    assert inspect.REPO == REPO
    monkeypatch.chdir(tmp_path)  # a third directory: neither the repo nor notebooks/
    assert inspect.find_run("pipelines") == REPO / "pipelines"  # not here: the repo's
    (tmp_path / "pipelines").mkdir()
    assert inspect.find_run("pipelines") == Path("pipelines")  # here wins over the repo
    monkeypatch.chdir(REPO / "notebooks")  # Jupyter's directory
    assert inspect.find_run("pipelines/seeds").resolve() == REPO / "pipelines" / "seeds"
    assert inspect.find_run(tmp_path) == tmp_path  # absolute: as given
    assert inspect.find_run("runs/nowhere") == Path("runs/nowhere")  # unresolved: as given


def test_every_notebook_resolves_its_run_dir_through_find_run():
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        code = ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        assert any("run = inspect.find_run(run_dir)" in c for c in code), nb.name
        assert not any("Path.cwd()" in c for c in code), nb.name
