"""alignfactory.storage against a local directory, moto's S3 server and the GCS emulator (over HTTP,
in their own processes: tests/object_store.py), and memory:// for the stores without preconditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignfactory import storage
from tests.object_store import REPO, serve  # the fixtures s3_server, gcs_server: tests/conftest.py

STORES = ["local", "s3", "gs"]


@pytest.fixture
def root(request, tmp_path):
    """A fresh run directory on the store named by the test's parameter, as location() gives it."""
    kind = request.param
    if kind == "local":
        return storage.location(tmp_path / "run")
    if kind == "memory":
        return storage.location(f"memory://af-tests/{tmp_path.name}/run")
    server = request.getfixturevalue("s3_server" if kind == "s3" else "gcs_server")
    return storage.location(server.url("run"))


@pytest.fixture
def quick_settle(monkeypatch):
    monkeypatch.setattr(storage._GenericStore, "SETTLE_S", 0.05)


def _env_of(root, request) -> dict[str, str]:
    """A minimal environment for a fresh process: PATH, the venv, and the server's variables only."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(REPO)}
    if not storage.is_local(root):
        server = request.getfixturevalue("s3_server" if root.protocol == "s3" else "gcs_server")
        env.update(server.env)
    return env


# ---- location -------------------------------------------------------------------------------------


def test_location_local_paths_stay_pathlib(tmp_path):
    assert type(storage.location(str(tmp_path))) is type(tmp_path)
    assert storage.location(f"file://{tmp_path}/x") == tmp_path / "x"
    assert storage.location(Path("runs/x")) == Path("runs/x")
    for p in ("runs/x", tmp_path, f"file://{tmp_path}", Path("a")):
        assert storage.is_local(p)
    for url in ("s3://b/runs/x", "gs://b/x", "memory://x/y"):
        p = storage.location(url)
        assert not storage.is_local(p) and not storage.is_local(url)
        assert str(p) == url and p.name == url.rsplit("/", 1)[1]
        assert str(p / "stages" / "0-read") == f"{url}/stages/0-read"


def test_location_names_the_missing_package(monkeypatch):
    import fsspec

    with pytest.raises(storage.StorageError, match=r"abfs://.*needs"):
        storage.location("abfs://container/runs/x")  # adlfs is not installed here
    with pytest.raises(storage.StorageError, match="no filesystem for nope://"):
        storage.location("nope://x/y")

    def missing(protocol):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(storage.StorageError) as e:
        storage.location("s3://bucket/runs/x")
    assert str(e.value) == "s3://bucket/runs/x: s3:// needs s3fs: pip install 'alignfactory[cloud]'"


# ---- writes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", STORES, indirect=True)
def test_write_atomic_read_glob(root):
    stage = root / "stages" / "1-generate"
    for i in range(3):
        storage.write_atomic(stage / f"shard-{i:05d}.jsonl", f'{{"i": {i}}}\n'.encode())
    storage.write_atomic(stage / "_SUCCESS", b"")
    storage.write_atomic(stage / "shard-00001.jsonl", b'{"i": "again"}\n')  # overwrite replaces

    assert (stage / "shard-00001.jsonl").read_bytes() == b'{"i": "again"}\n'
    assert (stage / "_SUCCESS").exists() and not (stage / "shard-00009.jsonl").exists()
    assert sorted(p.name for p in root.glob("stages/*/shard-*.jsonl")) == [
        "shard-00000.jsonl",
        "shard-00001.jsonl",
        "shard-00002.jsonl",
    ]
    with (stage / "shard-00002.jsonl").open("rb") as f:
        assert json.loads(f.read()) == {"i": 2}
    names = sorted(p.name for p in stage.iterdir())
    if storage.is_local(root):  # the temp files were renamed away
        assert not [n for n in names if ".tmp" in n]
    else:  # one PUT per object: no temp keys, no markers
        assert names == ["_SUCCESS", "shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]


@pytest.mark.parametrize("root", STORES, indirect=True)
@pytest.mark.parametrize("limit", [64 * 2**20, 10])  # the in-memory upload, and fs.put_file past it
def test_write_atomic_chunks_joins_the_pieces(root, limit, monkeypatch):
    monkeypatch.setattr(storage, "_IN_MEMORY_MAX", limit)
    target = root / "rejected" / "03-filter.jsonl"
    storage.write_atomic(target, b"old\n")
    pieces = (f'{{"i": {i}}}\n'.encode() for i in range(50))  # a generator: read once, in order
    storage.write_atomic_chunks(target, pieces)
    assert target.read_bytes() == b"".join(f'{{"i": {i}}}\n'.encode() for i in range(50))
    names = sorted(p.name for p in target.parent.iterdir())
    assert names == ["03-filter.jsonl"]  # no temp file or key left beside it


def test_local_write_atomic_temp_tag(tmp_path, monkeypatch):
    """Local writes go through `.<name>.tmp<tag>` (tag: the pid, or the driver's pid from a worker)."""
    target = tmp_path / "s" / "shard-0.jsonl"
    storage.write_atomic(target, b"old\n")

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        storage.write_atomic(target, b"new\n", tag=4242)
    assert target.read_bytes() == b"old\n"
    assert (tmp_path / "s" / ".shard-0.jsonl.tmp4242").read_bytes() == b"new\n"


class _Exploding:
    """A bytes-like that fails while it is being read."""

    def __bytes__(self):
        raise OSError("source failed midway")


@pytest.mark.parametrize("root", STORES, indirect=True)
def test_failed_write_keeps_the_old_object(root):
    shard = root / "shard-0.jsonl"
    storage.write_atomic(shard, b"old\n")
    with pytest.raises(OSError, match="midway"):
        storage.write_atomic(shard, _Exploding())
    assert shard.read_bytes() == b"old\n"


_WRITER = """
import asyncio.selector_events as se, os, signal, sys
from alignfactory import storage

path = storage.location(sys.argv[1])
assert path.exists()  # the client and its connection are set up

# kill -9 this process once 8 MiB of the body have gone to the socket: the server gets a body cut
# short, then the connection closes, as when a worker dies mid-upload
send, sent = se._SelectorSocketTransport.write, [0]
def write(self, data):
    room = (8 << 20) - sent[0]
    sent[0] += len(data)
    if sent[0] > 8 << 20:
        send(self, memoryview(data)[:room])
        os.kill(os.getpid(), signal.SIGKILL)
    return send(self, data)
se._SelectorSocketTransport.write = write

storage.write_atomic(path, b"x" * (24 << 20))
print("finished", flush=True)
"""


@pytest.mark.parametrize("root", ["s3", "gs"], indirect=True)
def test_writer_killed_mid_upload_leaves_old_object(root, request):
    """A writer killed -9 after sending 8 of 24 MiB: the object is still the old one, not a part of
    the new (the GCS emulator, before uploads named their md5Hash, stored the part)."""
    shard = root / "shard-0.jsonl"
    storage.write_atomic(shard, b"old\n")
    out = subprocess.run(
        [sys.executable, "-c", _WRITER, str(shard)],
        env=_env_of(root, request),
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()[-2000:]
    time.sleep(0.3)  # let the server finish with the broken request
    got = shard.read_bytes()
    assert got == b"old\n", len(got)
    assert [p.name for p in root.iterdir()] == ["shard-0.jsonl"]


@pytest.mark.parametrize("root", ["s3", "gs"], indirect=True)
def test_fresh_process_with_only_the_env_reads_and_writes(root, request):
    """What a Ray worker does: a new process that knows the URL and the environment, nothing else."""
    storage.write_atomic(root / "stages" / "0-read" / "shard-00000.jsonl", b'{"id": 1}\n')
    script = (
        "import sys; from alignfactory import storage as s\n"
        "r = s.location(sys.argv[1])\n"
        "print([p.name for p in r.glob('stages/*/shard-*.jsonl')], (r / 'stages/0-read/shard-00000.jsonl').read_bytes())\n"
        "s.write_atomic(r / 'stages' / '0-read' / 'shard-00001.jsonl', b'{\"id\": 2}\\n', tag=1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        env=_env_of(root, request),
        cwd="/",  # nothing from the test's directory; PYTHONPATH finds this checkout
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['shard-00000.jsonl'] b'{\"id\": 1}\\n'"
    assert (root / "stages" / "0-read" / "shard-00001.jsonl").read_bytes() == b'{"id": 2}\n'


# ---- the lease ------------------------------------------------------------------------------------

LEASE_STORES = ["local", "s3", "gs", "memory"]


@pytest.mark.parametrize("root", LEASE_STORES, indirect=True)
def test_second_run_is_refused_with_the_holder_named(root, quick_settle):
    with storage.acquire_lease(root, ttl_s=30) as lease:
        with pytest.raises(storage.LeaseHeld) as e:
            storage.acquire_lease(root, ttl_s=30)
        msg = str(e.value)
        assert msg.startswith(f"{root} is being written by another run: host ")
        assert f"pid {os.getpid()} (started " in msg and "its lease expires in " in msg
        assert e.value.holder["token"] == lease.record["token"] and 25 < e.value.expires_in <= 30
    with storage.acquire_lease(root, ttl_s=30) as again:  # released: the next run gets it
        assert again.took_over is None
    assert not (root / storage.LEASE_NAME).exists()


@pytest.mark.parametrize("root", LEASE_STORES, indirect=True)
def test_refresh_keeps_the_lease_alive(root, quick_settle):
    with storage.acquire_lease(root, ttl_s=1.2) as lease:
        first = lease.record["refreshed"]
        time.sleep(1.5)  # past the ttl: the heartbeat (every 0.4 s) kept it fresh
        with pytest.raises(storage.LeaseHeld):
            storage.acquire_lease(root, ttl_s=1.2)
        on_store = json.loads((root / storage.LEASE_NAME).read_bytes())
        assert on_store["token"] == lease.record["token"] and on_store["refreshed"] > first + 0.5
        lease.check()


def _stop_heartbeat(lease):
    """A holder that stopped refreshing (hung, or killed on another machine)."""
    lease._stop.set()
    lease._thread.join()


@pytest.mark.parametrize("root", LEASE_STORES, indirect=True)
def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(root, quick_settle):
    old = storage.acquire_lease(root, ttl_s=0.5)
    _stop_heartbeat(old)
    time.sleep(0.7)
    with storage.acquire_lease(root, ttl_s=30) as new:
        assert new.took_over["token"] == old.record["token"]
        with pytest.raises(storage.LeaseLost, match="taken over by host"):
            old.refresh()  # compare-and-swap against its last version fails: it must stop writing
        with pytest.raises(storage.LeaseLost):
            old.check()
        old.release()  # does not delete the new holder's lease
        assert json.loads((root / storage.LEASE_NAME).read_bytes())["token"] == new.record["token"]


@pytest.mark.parametrize("root", LEASE_STORES, indirect=True)
def test_concurrent_takers_exactly_one_wins(root, quick_settle):
    def race(ttl_s: float) -> list:
        results, barrier = [], threading.Barrier(4)

        def take():
            barrier.wait()
            try:
                results.append(storage.acquire_lease(root, ttl_s=ttl_s))
            except storage.LeaseHeld as e:
                results.append(e)

        threads = [threading.Thread(target=take) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    results = race(30)  # no lease yet: four creators
    won = [r for r in results if isinstance(r, storage.Lease)]
    assert len(won) == 1, results
    # its holder alive but silent since a minute: the lease on the store expired 30 s ago
    _stop_heartbeat(won[0])
    won[0].record["refreshed"] -= 60
    won[0]._version = won[0]._store.replace(won[0]._key, won[0]._encode(), won[0]._version)
    results = race(30)  # four takers of a stale lease
    winners = [r for r in results if isinstance(r, storage.Lease)]
    assert len(winners) == 1, results
    assert winners[0].took_over["token"] == won[0].record["token"]
    assert all(r.holder["token"] == winners[0].record["token"] for r in results if r is not winners[0])
    winners[0].release()


_HOLDER = """
import sys, time
from alignfactory import storage
lease = storage.acquire_lease(sys.argv[1], ttl_s=60)
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("root", STORES, indirect=True)
def test_kill_9_then_rerun_takes_the_lease_at_once(root, request):
    """A run killed on this machine: its pid is gone, so its 60 s lease is stale at once."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        env=_env_of(root, request),
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline() == b"held\n"
        with pytest.raises(storage.LeaseHeld) as e:
            storage.acquire_lease(root)
        assert e.value.holder["pid"] == proc.pid
    finally:
        proc.kill()
        proc.wait()
    with storage.acquire_lease(root) as lease:
        assert lease.took_over["pid"] == proc.pid


def test_ttl_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.LEASE_ENV, "7.5")
    with storage.acquire_lease(tmp_path / "run") as lease:
        assert lease.ttl_s == 7.5
        assert json.loads((tmp_path / "run" / storage.LEASE_NAME).read_text())["ttl_s"] == 7.5


_PROBE = """
import sys
from alignfactory import storage
lease = storage.acquire_lease(sys.argv[1], ttl_s=30)
print(type(lease._store).__name__)
try:
    storage.acquire_lease(sys.argv[1], ttl_s=30)
    print("not refused")
except storage.LeaseHeld:
    print("refused")
lease.release()
"""


def test_store_that_ignores_preconditions_falls_back_to_read_back(tmp_path):
    """gcp-storage-emulator as released ignores ifGenerationMatch: the probe notices, says so, and
    leases use write-then-read-back instead of trusting a create-if-absent that is not."""
    with serve("gcs-plain", tmp_path) as plain:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, plain.url("run")],
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **plain.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["_GenericStore", "refused"]
    assert "the store ignores conditional writes" in out.stderr
