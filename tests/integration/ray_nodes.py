"""`ray start` nodes on this machine that a test owns by pid: each in a session of its own, with its
own --temp-dir (so its address file stays out of /tmp/ray) and ports, SIGKILLed by pid at the end.
Not `ray stop`, which ends every Ray on the machine, a user's included."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.integration.conftest import free_port

BIN = Path(sys.executable).parent


@dataclass
class Node:
    name: str
    proc: subprocess.Popen  # `ray start --block`, in a session of its own
    log: Path

    def pids(self) -> set[int]:
        """Every live process of the node: its process group (the `ray start` process, raylet, agents,
        log monitor) and their descendants (workers, which the raylet puts in groups of their own)."""
        import psutil

        procs = set()
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    procs.add(p)
                    procs.update(p.children(recursive=True))
            except (psutil.Error, ProcessLookupError):
                pass
        return {p.pid for p in procs if _alive(p)}

    def node_id(self) -> str | None:
        """Ray's id of the node, from its raylet's command line."""
        import psutil

        for pid in self.pids():
            try:
                args = psutil.Process(pid).cmdline()
            except psutil.Error:
                continue
            if args and Path(args[0]).name == "raylet":
                return next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
        return None

    def kill(self) -> set[int]:
        """SIGKILL every process of the node, by pid; returns the pids. The node is frozen first
        (SIGSTOP), so that no worker is started between listing its processes and killing them."""
        pids, seen = self.pids(), set()
        while pids - seen:
            for pid in pids - seen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            seen |= pids
            pids = self.pids() | seen
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:  # SIGKILL is not instant on a busy machine
            time.sleep(0.05)
        return pids


def _alive(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_node(root: Path, name: str, env: dict, args: list[str], object_store_mb: int = 200) -> Node:
    """`ray start --block` in a session of its own; root must be short (Ray's socket paths under it
    must stay under 107 bytes)."""
    log = root / f"{name}.log"
    cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--temp-dir", str(root / name)]
    # nodes on one machine need ports of their own where Ray's defaults are fixed numbers (the agent's
    # 52365); a small object store each (plasma: 30% of RAM per node by default)
    cmd += [
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--object-store-memory",
        str(object_store_mb << 20),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd + args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Node(name, proc, log)


def node_env() -> dict:
    """The environment `ray` commands run in: this venv's `ray` first, no token auth (the tests reach
    the dashboard's REST API without one), and no RAY_ADDRESS (a head must not join another Ray)."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class Head:
    node: Node
    gcs: str  # 127.0.0.1:<port>, for `ray start --address`
    dashboard: str  # http://127.0.0.1:<port>, for `ray job submit` and the REST API


def start_head(
    root: Path, env: dict, name: str, num_cpus: int, extra: list[str], object_store_mb: int = 200
) -> Head:
    """A head node on free ports, its dashboard (and job agent) on 127.0.0.1."""
    port, dash = free_port(), free_port()
    args = ["--head", "--num-cpus", str(num_cpus), "--port", str(port)]
    args += ["--ray-client-server-port", str(free_port()), "--dashboard-host", "127.0.0.1"]
    args += ["--dashboard-port", str(dash), *extra]
    node = start_node(root, name, env, args, object_store_mb)
    return Head(node, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}")


def get_json(url: str, timeout: float = 10) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def nodes(dashboard: str, state: str) -> list[dict]:
    """Ray's nodes in `state` (ALIVE, DEAD), from the state API; [] while the dashboard is not up."""
    try:
        reply = get_json(f"{dashboard}/api/v0/nodes?limit=100&detail=true")
    except OSError:
        return []
    return [n for n in reply["data"]["result"]["result"] if n["state"] == state]


def all_alive(dashboard: str, nodes_up: list[Node]) -> bool:
    """Every node in nodes_up is ALIVE in Ray (its raylet registered with the GCS)."""
    ids = {n.node_id() for n in nodes_up}
    return None not in ids and ids <= {n["node_id"] for n in nodes(dashboard, "ALIVE")}


def wait_alive(dashboard: str, nodes_up: list[Node], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all_alive(dashboard, nodes_up):
        for n in nodes_up:
            assert n.proc.poll() is None, f"{n.name} exited:\n{n.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"nodes not up in {timeout} s"
        time.sleep(0.5)
