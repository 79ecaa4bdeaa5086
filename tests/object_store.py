"""S3- and GCS-compatible test servers over HTTP, as session-scoped pytest fixtures.

    def test_x(s3_server):                     # the fixtures are registered in tests/conftest.py
        url = s3_server.url("runs/x")          # s3://<bucket>/<unique prefix>/runs/x
        subprocess.run(..., env=s3_server.child_env())  # .env: all a Ray worker or CLI child needs

Each server is a separate process (python -m tests.object_store s3|gcs PORT [BUCKET]) on a free
loopback port, so other processes reach it over HTTP exactly as they would reach a bucket: the
variables in `.env` are all a fresh process needs, and the fixture also sets them in this process
for its session. The code under test talks to them through s3fs/gcsfs with no options: the same
code a user's bucket sees.

- s3: moto's server (moto[server]) on werkzeug, single-threaded. moto checks If-None-Match /
  If-Match and then writes without a lock; threaded, two racing conditional writes could both pass
  (not seen in 60 four-way races here, but not excluded). Serving one request at a time makes its
  conditional writes atomic, as S3's are.
- gcs: gcp-storage-emulator, in memory. It ignores ifGenerationMatch (measured: a create over an
  existing object succeeds), which real GCS honours; _serve_gcs adds that check to its upload and
  delete handlers (412 when the object's generation differs, 0 meaning absent) so the tests see the
  preconditions a real bucket applies. Its HTTP server handles one request at a time, so the check
  and the write are atomic. `serve("gcs-plain", tmp)` runs it as released (no preconditions), for
  the fallback of stores that ignore them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test may reach beyond loopback: without this, google-auth's default-credentials chain probes the
# GCE metadata address, and gcsfs asks a storage-control API the emulator does not have (both read
# at import, so set before gcsfs or google.auth load).
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ObjectStore:
    protocol: str  # "s3" or "gs"
    bucket: str
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # the variables a fresh process needs to reach the server
    proc: subprocess.Popen = field(repr=False)

    def url(self, *parts: str) -> str:
        """A fresh URL under the bucket: each call gets its own prefix, so tests never collide."""
        return "/".join([f"{self.protocol}://{self.bucket}", uuid.uuid4().hex[:12], *parts])

    def child_env(self) -> dict[str, str]:
        """os.environ plus this server's variables, for subprocess.run(env=...)."""
        return {**os.environ, **self.env}


def _start(kind: str, bucket: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log = open(log_path, "wb")  # noqa: SIM115 (the server's lifetime)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.object_store", kind, str(port), bucket],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/", timeout=2):
                    return proc, endpoint
            except urllib.error.HTTPError:
                return proc, endpoint  # it answers: up
            except OSError:
                time.sleep(0.1)
        _stop(proc)
    raise RuntimeError(f"{kind} test server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve(kind: str, tmp: Path):
    """A server of `kind` (s3, gcs, gcs-plain) for the duration of the block; its env set here."""
    bucket = f"af-test-{uuid.uuid4().hex[:8]}"
    proc, endpoint = _start(kind, bucket, tmp / f"{kind}-server.log")
    try:
        if kind == "s3":
            env = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")  # create the bucket
            urllib.request.urlopen(req, timeout=10).close()
        else:
            env = {
                "STORAGE_EMULATOR_HOST": endpoint,
                "NO_GCE_CHECK": "true",
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            }
        store = ObjectStore("s3" if kind == "s3" else "gs", bucket, endpoint, env, proc)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            mp.delenv("AWS_PROFILE", raising=False)  # env keys, not a profile, must be used
            yield store
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server in its own process; env: AWS_ENDPOINT_URL and test keys."""
    with serve("s3", tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """gcp-storage-emulator (with GCS preconditions) in its own process; env: STORAGE_EMULATOR_HOST."""
    with serve("gcs", tmp_path_factory.mktemp("gcs")) as store:
        yield store


# ---- the server processes --------------------------------------------------------------------------


def _serve_s3(port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.server import MotoRequestHandler
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=False, request_handler=MotoRequestHandler)


def _serve_gcs(port: int, bucket: str, preconditions: bool = True) -> None:
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def generation(storage, bucket_name: str, name: str | None) -> str:
        try:
            return str(storage.get_file_obj(bucket_name, name)["generation"])
        except NotFound:
            return "0"

    def upload_name(request) -> str | None:
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data  # also consumes the body before we answer
        return data.get("meta", {}).get("name") if isinstance(data, dict) else None

    def with_precondition(handler, name_of):
        def checked(request, response, storage, *args, **kwargs):
            want = request.query.get("ifGenerationMatch")
            if want:
                have = generation(storage, request.params["bucket_name"], name_of(request))
                if have != want[0]:
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    msg = "At least one of the pre-conditions you specified did not hold."
                    response.json({"error": {"code": 412, "message": msg, "errors": [{"message": msg}]}})
                    return None
            return handler(request, response, storage, *args, **kwargs)

        return checked

    if not preconditions:  # the emulator as released
        server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
        return
    patched = {
        objects.insert: with_precondition(objects.insert, upload_name),
        objects.delete: with_precondition(objects.delete, lambda r: r.params["object_id"]),
    }
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn in patched:
                handlers[method] = patched[fn]
    objects.insert = patched[objects.insert]  # the router's fallback for uploads names it directly

    server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "s3":
        _serve_s3(port)
    else:  # gcs, or gcs-plain: the emulator without the precondition checks
        _serve_gcs(port, sys.argv[3], preconditions=kind == "gcs")
