"""Where a run directory lives: a local path or any fsspec URL (s3://, gs://, memory://, ...).

    location("runs/x")            -> pathlib.Path           (local: the fast path, unchanged behaviour)
    location("file:///data/x")    -> pathlib.Path
    location("s3://bucket/runs/x") -> upath.UPath             (pathlib's API over fsspec: /, exists, glob,
                                                              open, read_bytes, iterdir, name, parent)
    write_atomic(path, data)      readers see all of `data` or the old/no file, never part of it
    acquire_lease(root)           one writer per run directory; a dead writer's lease is taken over

Credentials and endpoints come from the usual environment, so a user's bucket and the test servers
go through the same code with no options here:
- S3: botocore's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, instance roles).
  AWS_ENDPOINT_URL points it at an S3-compatible server: botocore reads it since 1.28
  (botocore/configprovider.py, "AWS_ENDPOINT_URL"), and s3fs passes endpoint_url=None through.
- GCS: google-auth's chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the metadata server), then
  anonymous. STORAGE_EMULATOR_HOST points gcsfs at an emulator (gcsfs/core.py, _location()).
  With an emulator also set NO_GCE_CHECK=true (else google-auth probes the GCE metadata address)
  and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (else gcsfs asks the storage-control API, which
  emulators lack, for every bucket's layout and logs a warning each time).

Retries on transient errors are the filesystems' own, which cover every call made here:
- s3fs wraps each call in _error_wrapper (s3fs/core.py): 5 tries with backoff on timeouts,
  connection and payload errors and "SlowDown" throttling; under it botocore's retry handler
  retries 5xx, throttling and connection errors itself.
- gcsfs decorates every request with retry_request (gcsfs/retry.py): 6 tries with exponential
  backoff on 408, 429, 5xx and connection errors.
Other fsspec filesystems get a small bounded retry here (_retry: 3 tries on ConnectionError and
TimeoutError). A retried conditional write is ambiguous (the first try may have landed before its
answer was lost): the lease resolves that by reading back its own token.

Nothing heavy is imported at module import: fsspec, upath, s3fs and gcsfs load on first use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePath

log = logging.getLogger(__name__)

LEASE_NAME = "_LEASE"
DEFAULT_LEASE_S = 60.0
LEASE_ENV = "ALIGNFACTORY_LEASE_SECONDS"

# object stores whose completed single PUT (or completed multipart/resumable upload) replaces the
# whole object at once: readers see the old object, no object, or all of the new one
_WHOLE_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}
_IN_MEMORY_MAX = 64 * 2**20  # write_atomic_chunks: larger files are uploaded from a local file
_GCS_SIMPLE_MAX = 50 * 2**20  # gcsfs's switch to resumable uploads (finalized only when complete)
_CLOUD_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_LOCAL_PROTOCOLS = {"", "file", "local"}


class StorageError(RuntimeError):
    """A run-directory URL that cannot be used (unknown protocol, filesystem not installed)."""


class LeaseHeld(RuntimeError):
    """Another run holds the run directory's lease. `holder` is its lease record (host, pid, ...)."""

    def __init__(self, run_dir: str, holder: dict, expires_in: float | None):
        self.run_dir, self.holder, self.expires_in = run_dir, holder, expires_in
        super().__init__(_held_message(run_dir, holder, expires_in))


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it was not refreshed within its ttl): stop writing."""


# ---- where ----------------------------------------------------------------------------------------


def location(where):
    """A run directory (or any file in one) as a path object: plain pathlib.Path for local paths and
    file:// URLs, a upath.UPath for other fsspec URLs. Raises StorageError naming the URL and the
    package to install when the protocol's filesystem is not installed."""
    if isinstance(where, PurePath):  # pathlib.Path, and upath's local PosixUPath
        return Path(where)
    protocol = getattr(where, "protocol", None)
    if protocol is not None:  # already a UPath
        return Path(where.path) if protocol in _LOCAL_PROTOCOLS else where
    text = os.fspath(where)
    if "://" not in text:
        return Path(text)
    protocol = text.split("://", 1)[0].lower()
    if protocol in ("file", "local"):
        from urllib.parse import unquote, urlparse

        url = urlparse(text)
        if url.netloc not in ("", "localhost"):
            raise StorageError(f"{text}: a file:// URL names a path on this machine (file:///path)")
        return Path(unquote(url.path))
    _check_protocol(protocol, text)
    from upath import UPath

    # no listings cache: Ray workers in other processes write the run dir all the time, and a cached
    # listing would hide their files from the driver (gcsfs answered FileNotFound for a summary a
    # worker had just written)
    return UPath(text, use_listings_cache=False)


def is_local(p) -> bool:
    """True for a local path (str without a scheme, file:// URL, pathlib.Path), False for object stores."""
    if isinstance(p, PurePath):
        return True
    protocol = getattr(p, "protocol", None)
    if protocol is not None:
        return protocol in _LOCAL_PROTOCOLS
    text = os.fspath(p)
    return "://" not in text or text.split("://", 1)[0].lower() in ("file", "local")


# What Ray workers need to reach the same store as the driver (ray_plumbing.ensure_ray forwards them
# to a Ray the driver starts; workers of a cluster it joins use the nodes' own settings and roles).
STORE_CONFIG_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "STORAGE_EMULATOR_HOST",
    "NO_GCE_CHECK",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
    LEASE_ENV,
)
STORE_SECRET_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def worker_env(with_secrets: bool) -> dict[str, str]:
    """The storage settings of this process's environment that are set, for Ray workers' env_vars.
    Secrets only on request: a job's runtime_env is shown on the Ray dashboard."""
    names = STORE_CONFIG_VARS + (STORE_SECRET_VARS if with_secrets else ())
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def resolved(where):
    """location(where), resolved when local (an absolute path: a cache key, a name in messages)."""
    p = location(where)
    return p.resolve() if isinstance(p, Path) else p


def stamp(p) -> float:
    """When a file last changed, as a cache key: st_mtime_ns locally, the store's mtime otherwise."""
    st = p.stat()
    return getattr(st, "st_mtime_ns", 0) or st.st_mtime


def local_copy(where) -> Path:
    """A local path as is; a file on a store copied once into the temp dir (keyed by URL, size and
    mtime), for readers that take local files only (datasets refuses URLs when HF_HUB_OFFLINE=1)."""
    p = location(where)
    if isinstance(p, Path):
        return p
    import hashlib
    import tempfile

    st = p.stat()
    key = hashlib.sha1(f"{p}|{st.st_size}|{stamp(p)}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "alignfactory-data" / key / p.name
    if not target.exists():
        _write_local(target, p.read_bytes(), os.getpid())
    return target


def remove_tree(p) -> None:
    """Delete a directory (a local tree, or every object under a URL prefix); absent is fine."""
    p = location(p)
    if isinstance(p, Path):
        import shutil

        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.fs.rm(p.path, recursive=True)


def _check_protocol(protocol: str, url: str) -> None:
    cloud = "pip install 'alignfactory[cloud]'"
    try:
        import fsspec
        import upath  # noqa: F401
    except ImportError as e:
        raise StorageError(f"{url} needs {e.name}: {cloud}") from e
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError as e:
        raise StorageError(f"{url}: fsspec knows no filesystem for {protocol}://") from e
    except ImportError as e:
        package = _CLOUD_PACKAGES.get(protocol)
        if package:
            raise StorageError(f"{url}: {protocol}:// needs {package}: {cloud}") from e
        raise StorageError(f"{url}: {protocol}:// needs a package that is not installed: {e}") from e


def _fs_and_path(p):
    """(fsspec filesystem, path inside it) of a UPath."""
    return p.fs, p.path


def _retry(fn, *args, tries: int = 3, **kwargs):
    """Bounded retry for fsspec filesystems that have none of their own (not s3fs or gcsfs)."""
    for attempt in range(tries):
        try:
            return fn(*args, **kwargs)
        except (ConnectionError, TimeoutError) as e:
            if attempt == tries - 1:
                raise
            log.warning("transient storage error, retrying: %s", e)
            time.sleep(0.2 * 2**attempt)


def _own_retries(fs) -> bool:
    return type(fs).__module__.split(".")[0] in ("s3fs", "gcsfs")


# ---- atomic writes --------------------------------------------------------------------------------


def write_atomic(path, data: bytes, tag: str | int | None = None) -> None:
    """Write `data` to `path` so that readers see all of it or the previous/no file, never part of it.

    Local: a temp file `.<name>.tmp<tag>` in the same directory, fsync, rename over `path`, fsync the
    directory (a kill -9 leaves at most the hidden temp file). `tag` defaults to this process's pid;
    Ray workers pass the driver's pid so that a resumed driver can recognise its temp files.

    Object stores (s3, gs, az, memory): ONE whole-object upload of the complete bytes, no temp key and
    no commit marker. None is needed because these stores make an upload visible only when it has
    completed, whole: S3's PutObject reference says S3 never adds a partial object (a success answer
    means the entire object was added), and a multipart upload's object appears only at
    CompleteMultipartUpload (s3fs's pipe_file switches to multipart at 2 x 50 MiB and aborts it on
    error: s3fs/core.py _pipe_file); GCS lists uploads among its atomic single-object operations
    (Cloud Storage "Consistency" page, "Atomic operations"), and a resumable upload is finalized only
    when its last byte arrives (gcsfs uses it from 50 MiB and deletes the session on error:
    gcsfs/core.py _pipe_file). A failed or killed upload therefore leaves the old object or none.
    Hence fs.pipe_file (or one upload call) and never a buffered fs.open("wb"): on an exception inside
    `with fs.open(...)` fsspec still closes the file, which uploads what was written so far as a
    complete, truncated object.

    The server must also refuse a body cut short (a writer killed mid-request). For that to rest on
    more than HTTP framing, each upload carries a checksum that the store verifies before it creates
    the object: botocore adds a CRC32 to every PutObject (flexible checksums, default
    request_checksum_calculation=when_supported since botocore 1.36) and GCS uploads here name the
    md5Hash in the object resource. gcp-storage-emulator stored 3.9 MB of a 24 MiB upload killed
    midway as the object when no md5Hash was named (measured); naming it, it refuses the body.

    Other fsspec filesystems (sftp, hdfs, webdav, ...): a temp name beside `path`, then fs.mv.
    """
    data = bytes(data)  # the whole body exists before any byte is sent
    p = location(path)
    if isinstance(p, Path):
        _write_local(p, data, os.getpid() if tag is None else tag)
        return
    fs, key = _fs_and_path(p)
    call = (lambda f, *a, **k: f(*a, **k)) if _own_retries(fs) else _retry
    if type(fs).__module__.startswith("gcsfs") and len(data) < _GCS_SIMPLE_MAX:
        _GCSStore(fs).upload(p, data)  # names the MD5: a truncated body is refused, never stored
        return
    if p.protocol in _WHOLE_OBJECT_STORES:
        call(fs.pipe_file, key, data)
        return
    tmp = f"{p.parent.path}/.{p.name}.tmp{os.getpid() if tag is None else tag}"
    call(fs.pipe_file, tmp, data)
    call(fs.mv, tmp, key)


def write_atomic_chunks(path, chunks: Iterable[bytes], tag: str | int | None = None) -> None:
    """write_atomic for a file made in pieces that need not fit in memory together (rejected/ of a
    10M-row stage). Local: the same temp file + rename. Elsewhere the pieces go to a local temp file
    first; up to 64 MiB it is then write_atomic's upload, above that one fs.put_file, which s3fs and
    gcsfs send as a multipart / resumable upload: visible only once complete (write_atomic's note)."""
    p = location(path)
    tag = os.getpid() if tag is None else tag
    if isinstance(p, Path):
        _write_local(p, chunks, tag)
        return
    with tempfile.TemporaryDirectory(prefix="alignfactory-upload-") as d:
        local = Path(d) / p.name
        _write_synced(local, chunks)
        if local.stat().st_size <= _IN_MEMORY_MAX:
            write_atomic(p, local.read_bytes(), tag)
            return
        fs, key = _fs_and_path(p)
        call = (lambda f, *a, **k: f(*a, **k)) if _own_retries(fs) else _retry
        if p.protocol in _WHOLE_OBJECT_STORES:
            call(fs.put_file, str(local), key)
            return
        tmp = f"{p.parent.path}/.{p.name}.tmp{tag}"
        call(fs.put_file, str(local), tmp)
        call(fs.mv, tmp, key)


def _write_local(path: Path, data: bytes | Iterable[bytes], tag) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{tag}")
    _write_synced(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes | Iterable[bytes]) -> None:
    """All of data (bytes, or pieces of it) in a new file, on disk before this returns."""
    with open(path, "wb") as f:
        for piece in [data] if isinstance(data, bytes) else data:
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(d: Path) -> None:
    dir_fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---- the lease ------------------------------------------------------------------------------------
#
# One run writes a run directory at a time. The lease is a small JSON object `<root>/_LEASE`:
#   {run_dir, host, pid, pid_start, machine, token, started, refreshed, ttl_s}
# Rules:
# - acquire creates it only if absent (an atomic create-if-absent, see the stores below);
# - the holder rewrites it every ttl/3 (a daemon heartbeat thread), each time only if it is still
#   the version the holder last wrote (compare-and-swap), so a holder that was taken over notices
#   (LeaseLost) instead of overwriting its successor;
# - a lease not refreshed for its ttl is stale; so is, at once, one whose process is gone on this
#   machine (same boot and pid namespace, pid dead or reused): a local kill -9 then re-run resumes
#   immediately, a run killed on another host resumes once its lease expires;
# - a stale lease is replaced with compare-and-swap against the version read, so of two takers
#   exactly one wins and the other sees the winner's fresh lease (LeaseHeld);
# - release deletes the lease if it is still ours.
# Staleness compares the holder's wall clock (refreshed) with the taker's: hosts must agree on the
# time to well within the ttl (NTP does).


class _Conflict(Exception):
    """A conditional write or delete found another version than the one expected."""


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE_S)


def acquire_lease(root, ttl_s: float | None = None) -> Lease:
    """Take the lease of run directory `root` (path or URL) and start refreshing it every ttl/3.

    Raises LeaseHeld, naming the run dir, the holder's host/pid/start time and when it expires, if a
    live run holds it. ttl_s defaults to $ALIGNFACTORY_LEASE_SECONDS or 60 s."""
    ttl = float(ttl_s) if ttl_s is not None else lease_seconds()
    if ttl <= 0:
        raise ValueError(f"lease ttl must be > 0 s, got {ttl}")
    root_p = location(root)
    store = _store(root_p)
    lease = Lease(root_p, store, ttl)
    lease._acquire()
    return lease


class Lease:
    """A held run-directory lease. refresh() rewrites it (the heartbeat does so every ttl/3);
    check() raises LeaseLost once another run took it over; release() stops the heartbeat and
    deletes it. Also a context manager."""

    def __init__(self, root, store, ttl_s: float):
        self.root, self.ttl_s = root, ttl_s
        self.run_dir = str(root)
        self._store = store
        self._key = root / LEASE_NAME
        self.record = {
            "run_dir": self.run_dir,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "machine": _machine_id(),
            "token": uuid.uuid4().hex,
            "started": time.time(),
            "refreshed": time.time(),
            "ttl_s": ttl_s,
        }
        self._version = None  # what the store calls the version we last wrote
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the lease was lost, once it was
        self.took_over: dict | None = None  # the stale lease this one replaced, if any

    # -- acquire ------------------------------------------------------------------------------------

    def _acquire(self) -> None:
        for _ in range(5):  # a turn ends in success, LeaseHeld, or a lost race that needs a fresh look
            if self._try_acquire():
                break
        else:
            raise LeaseHeld(self.run_dir, {}, None)  # the lease kept changing under us
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.run_dir}", daemon=True)
        self._thread.start()

    def _try_acquire(self) -> bool:
        data = self._encode()
        try:
            self._version = self._store.create(self._key, data)
            return True
        except FileExistsError:
            pass
        current = self._store.read(self._key)
        if current is None:  # released between our create and our read
            return False
        raw, version, mtime = current
        holder = _decode(raw)
        if holder.get("token") == self.record["token"]:  # our create landed; its answer was lost
            self._version = version
            return True
        stale = _stale_reason(holder, mtime, self.ttl_s)
        if stale is None:
            raise LeaseHeld(self.run_dir, holder, _expires_in(holder))
        try:
            self._version = self._store.replace(self._key, data, version)
        except (_Conflict, FileNotFoundError):
            return False  # another taker won, or the lease went: look again
        self.took_over = holder
        log.warning("%s: took over a stale lease (%s) of %s", self.run_dir, stale, _who(holder))
        return True

    # -- hold ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rewrite the lease with a new time, only if it is still ours; LeaseLost if it is not."""
        with self._lock:
            self.check()
            if self._version is None:
                raise LeaseLost(f"{self.run_dir}: the lease was released")
            self.record["refreshed"] = time.time()
            data = self._encode()
            try:
                self._version = self._store.replace(self._key, data, self._version)
            except (_Conflict, FileNotFoundError):
                current = self._store.read(self._key)
                if current is not None and _decode(current[0]).get("token") == self.record["token"]:
                    self._version = current[1]  # our write landed; a retry's answer said otherwise
                    return
                holder = _decode(current[0]) if current else {}
                self.lost = f"taken over by {_who(holder)}" if holder else "deleted by someone else"
                raise LeaseLost(f"{self.run_dir}: lease {self.lost}; stop writing") from None

    def check(self) -> None:
        """Raise LeaseLost if the heartbeat found the lease taken over."""
        if self.lost:
            raise LeaseLost(f"{self.run_dir}: lease {self.lost}; stop writing")

    def _heartbeat(self) -> None:
        interval = self.ttl_s / 3
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except LeaseLost as e:
                log.error("%s", e)
                return
            except Exception as e:  # transient (the stores retried already): try again next tick
                log.warning("%s: lease refresh failed, retrying in %.0f s: %s", self.run_dir, interval, e)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._version is None or self.lost:
                return
            with contextlib.suppress(_Conflict, FileNotFoundError):  # taken over or gone: not ours
                self._store.delete(self._key, self._version)
            self._version = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _encode(self) -> bytes:
        return (json.dumps(self.record, indent=1) + "\n").encode()


def _decode(raw: bytes) -> dict:
    try:
        rec = json.loads(raw)
    except ValueError:
        return {}
    return rec if isinstance(rec, dict) else {}


def _expires_in(holder: dict) -> float | None:
    try:
        return float(holder["refreshed"]) + float(holder["ttl_s"]) - time.time()
    except (KeyError, TypeError, ValueError):
        return None


def _stale_reason(holder: dict, mtime: float | None, ttl_s: float) -> str | None:
    """Why a lease may be taken over, or None while its holder may be alive."""
    if not holder:  # unreadable (hand-edited, truncated by another tool): judge by its age
        age = time.time() - mtime if mtime is not None else float("inf")
        return f"unreadable lease {age:.0f} s old" if age > ttl_s else None
    left = _expires_in(holder)
    if left is None or left < 0:
        return f"expired {-left:.0f} s ago" if left is not None else "no expiry recorded"
    if holder.get("machine") and holder.get("machine") == _machine_id():
        pid = holder.get("pid")
        if isinstance(pid, int) and not _pid_alive(pid, holder.get("pid_start")):
            return f"process {pid} on this machine is gone"
    return None


def _who(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (started {when})"


def _held_message(run_dir: str, holder: dict, expires_in: float | None) -> str:
    if not holder:
        return (
            f"{run_dir} has an unreadable or changing lease ({LEASE_NAME}): another run may be starting "
            f"there. If none is, delete {run_dir}/{LEASE_NAME}."
        )
    ttl = holder.get("ttl_s")
    ttl_s = f"{ttl:g}" if isinstance(ttl, (int, float)) else "?"
    until = f"expires in {expires_in:.0f} s" if expires_in is not None else "has no expiry"
    return (
        f"{run_dir} is being written by another run: {_who(holder)}; its lease {until} unless that "
        f"run refreshes it (it does every {ttl_s} s / 3 while alive). Two runs must not write one run "
        f"directory: wait for it to finish or stop it, or use another output directory. A run killed "
        f"on this machine is taken over at once, one killed elsewhere once its lease expires "
        f"({LEASE_ENV}={ttl_s})."
    )


def _machine_id() -> str:
    """This machine's boot and pid namespace: pids are comparable only within one."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return ":".join(parts) if parts else f"host:{socket.gethostname()}"


def _pid_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    if start is not None:
        now = _pid_start(pid)
        if now is not None and now != start:
            return False  # the pid was reused by another process
    return True


# ---- the stores: create-if-absent, read, compare-and-swap, conditional delete ----------------------
#
# Each store's version is what its compare-and-swap compares: the file's bytes (local, generic),
# the ETag (S3), the generation (GCS).


def _store(root):
    if isinstance(root, Path):
        return _LocalStore()
    fs = root.fs
    kind = type(fs).__module__.split(".")[0]
    store = {"s3fs": _S3Store, "gcsfs": _GCSStore}.get(kind)
    if store is None:
        return _GenericStore()
    endpoint = getattr(fs, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
    if kind == "gcsfs":
        endpoint = getattr(fs, "_location", None)
    key = (kind, getattr(fs, "_fs_token", None), endpoint, root.path.split("/", 1)[0])
    if key not in _CONDITIONAL:
        _CONDITIONAL[key] = store(fs).probe(root)
        if not _CONDITIONAL[key]:
            log.warning(
                "%s: the store ignores conditional writes; leases fall back to write-then-read-back, "
                "which two runs starting within a second of each other can both pass",
                root,
            )
    return store(fs) if _CONDITIONAL[key] else _GenericStore()


_CONDITIONAL: dict[tuple, bool] = {}  # per store endpoint and bucket: does it honour preconditions?


class _LocalStore:
    """Create-if-absent: the complete lease goes to a temp file that os.link() puts in place, which
    fails if the name exists (O_EXCL semantics, and no reader ever sees a half-written lease).
    Compare-and-swap and delete run under flock() of a sidecar `._LEASE.lock`; the kernel drops the
    lock when its holder dies, and Linux maps flock to byte-range locks on NFS."""

    def create(self, key: Path, data: bytes) -> bytes:
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_name(f".{key.name}.new{os.getpid()}-{uuid.uuid4().hex[:8]}")
        _write_synced(tmp, data)
        try:
            os.link(tmp, key)  # FileExistsError if held
        finally:
            tmp.unlink()
        _fsync_dir(key.parent)
        return data

    def read(self, key: Path):
        try:
            raw = key.read_bytes()
            return raw, raw, key.stat().st_mtime
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _locked(self, key: Path):
        import fcntl

        with open(key.with_name(f".{key.name}.lock"), "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield

    def replace(self, key: Path, data: bytes, version: bytes) -> bytes:
        with self._locked(key):
            if key.read_bytes() != version:  # FileNotFoundError if deleted
                raise _Conflict
            _write_local(key, data, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return data

    def delete(self, key: Path, version: bytes) -> None:
        with self._locked(key):
            if key.read_bytes() != version:
                raise _Conflict
            key.unlink()


class _S3Store:
    """S3 conditional writes: PutObject with If-None-Match: * creates only if absent, with
    If-Match: <etag> replaces only that version (both on AWS S3 since Aug/Nov 2024; moto honours
    both, measured). s3fs exposes the first as pipe_file(mode="create"); we call put_object directly
    to get the ETag and to pass If-Match. AWS answers 409 ConditionalRequestConflict when two
    conditional writes race; that is a lost race like 412."""

    def __init__(self, fs):
        self.fs = fs

    def _put(self, key, data: bytes, **cond) -> str:
        bucket, k, _ = self.fs.split_path(key.path)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=k, Body=data, **cond)
        except OSError as e:
            if _s3_code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise (FileExistsError if "IfNoneMatch" in cond else _Conflict)(str(key)) from e
            raise
        self.fs.invalidate_cache(key.path)
        return out["ETag"]

    def create(self, key, data: bytes) -> str:
        return self._put(key, data, IfNoneMatch="*")

    def replace(self, key, data: bytes, version: str) -> str:
        return self._put(key, data, IfMatch=version)

    def read(self, key):
        async def get(bucket, k):
            try:
                r = await self.fs._call_s3("get_object", Bucket=bucket, Key=k)
            except FileNotFoundError:
                return None
            async with r["Body"] as body:  # the bytes and their ETag come from one response
                return await body.read(), r["ETag"], r["LastModified"].timestamp()

        from fsspec.asyn import sync

        bucket, k, _ = self.fs.split_path(key.path)
        return sync(self.fs.loop, get, bucket, k)

    def delete(self, key, version: str) -> None:
        # If-Match on DeleteObject: moto honours it; a store that ignores it would delete a successor's
        # lease, so compare first as well (that leaves only the milliseconds between the two requests)
        current = self.read(key)
        if current is None:
            raise FileNotFoundError(str(key))
        if current[1] != version:
            raise _Conflict(str(key))
        bucket, k, _ = self.fs.split_path(key.path)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=k, IfMatch=version)
        except OSError as e:
            if _s3_code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise _Conflict(str(key)) from e
            if _s3_code(e) != "NotImplemented":
                raise
            self.fs.call_s3("delete_object", Bucket=bucket, Key=k)  # refuses the header: compared above
        self.fs.invalidate_cache(key.path)

    def probe(self, root) -> bool:
        return _probe(self, root)


def _s3_code(e: BaseException) -> str | None:
    """The S3 error code behind an s3fs exception (s3fs translates botocore's ClientError)."""
    for err in (e, e.__cause__, e.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code") or str(
                response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            )
    return None


class _GCSStore:
    """GCS preconditions: ifGenerationMatch=0 creates only if absent, ifGenerationMatch=<generation>
    replaces or deletes only that version; a failed precondition is HTTP 412, which gcsfs raises as
    FileExistsError (gcsfs/retry.py validate_response). gcsfs's pipe_file(mode="create") sends the
    first; the others are sent here as the same simple (multipart) upload gcsfs makes.
    gcp-storage-emulator 2026.7.19 ignores ifGenerationMatch (measured): against it the probe fails
    and leases fall back to _GenericStore; tests/object_store.py adds the check to its emulator."""

    def __init__(self, fs):
        self.fs = fs

    def upload(self, key, data: bytes, generation: str | None = None) -> str:
        """One simple (multipart/related) upload, as gcsfs makes below 50 MiB, naming the data's MD5
        (GCS refuses a body that does not match it) and, if given, ifGenerationMatch. Returns the new
        object's generation."""
        import base64
        import hashlib

        from gcsfs.core import quote

        bucket, k, _ = self.fs.split_path(key.path)
        meta = json.dumps({"name": k, "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode()})
        body = (
            (
                f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{meta}\n--==0==\n"
                "Content-Type: application/octet-stream\n\n"
            ).encode()
            + data
            + b"\n--==0==--"
        )
        try:
            out = self.fs.call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                uploadType="multipart",
                headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                data=body,
                json_out=True,
                ifGenerationMatch=generation,  # None: not sent
            )
        except FileExistsError:  # 412
            if generation in (None, "0"):
                raise
            raise _Conflict(str(key)) from None
        self.fs.invalidate_cache(key.path)
        return str(out["generation"])

    def create(self, key, data: bytes) -> str:
        return self.upload(key, data, "0")

    def replace(self, key, data: bytes, version: str) -> str:
        return self.upload(key, data, version)

    def read(self, key):
        bucket, k, _ = self.fs.split_path(key.path)
        try:
            # metadata first, then the bytes: if the object changes in between, the generation we
            # hold is older than the bytes, so a compare-and-swap against it fails (never the reverse)
            meta = self.fs.call("GET", "b/{}/o/{}", bucket, k, json_out=True)
            _, raw = self.fs.call("GET", "b/{}/o/{}", bucket, k, alt="media")
        except FileNotFoundError:
            return None
        mtime = self.fs._parse_timestamp(meta["updated"]).timestamp() if meta.get("updated") else None
        return raw, str(meta["generation"]), mtime

    def delete(self, key, version: str) -> None:
        bucket, k, _ = self.fs.split_path(key.path)
        try:
            self.fs.call("DELETE", "b/{}/o/{}", bucket, k, ifGenerationMatch=version)
        except FileExistsError:
            raise _Conflict(str(key)) from None
        self.fs.invalidate_cache(key.path)

    def probe(self, root) -> bool:
        return _probe(self, root)


def _probe(store, root) -> bool:
    """Does this store honour create-if-absent and compare-and-swap? Four requests, once per process
    and bucket: create a probe object, create it again (must fail), replace it against a wrong
    version (must fail), delete it."""
    key = root / f"{LEASE_NAME}.probe-{uuid.uuid4().hex[:12]}"
    version = store.create(key, b"probe")
    ok = True
    try:
        try:
            store.create(key, b"again")
            ok = False
        except FileExistsError:
            pass
        try:
            wrong = "1" if isinstance(store, _GCSStore) else '"00000000000000000000000000000000"'
            store.replace(key, b"swap", wrong)
            ok = False
        except _Conflict:
            pass
    finally:
        with contextlib.suppress(Exception):
            current = store.read(key)
            store.delete(key, current[1] if current else version)
    return ok


class _GenericStore:
    """For filesystems without conditional writes (memory://, most fsspec backends, and S3/GCS
    servers whose probe shows they ignore preconditions): write, wait SETTLE_S, read back and compare.
    Of writers whose writes land within SETTLE_S of each other only the last one reads its own bytes
    back and wins. The race it leaves: two runs that both find no lease and whose writes land more than
    SETTLE_S apart, the second after the first's read-back, both win. That takes two runs started on
    one run directory within about a second of each other on a store without preconditions."""

    SETTLE_S = 0.5

    def _read(self, key):
        fs, path = _fs_and_path(key)
        try:
            return _retry(fs.cat_file, path)
        except FileNotFoundError:
            return None

    def _write_and_check(self, key, data: bytes, exc) -> bytes:
        fs, path = _fs_and_path(key)
        _retry(fs.pipe_file, path, data)
        time.sleep(self.SETTLE_S)
        if self._read(key) != data:
            raise exc(str(key))
        return data

    def create(self, key, data: bytes) -> bytes:
        if self._read(key) is not None:
            raise FileExistsError(str(key))
        return self._write_and_check(key, data, FileExistsError)

    def read(self, key):
        raw = self._read(key)
        if raw is None:
            return None
        fs, path = _fs_and_path(key)
        try:
            mtime = fs.modified(path).timestamp()
        except (NotImplementedError, FileNotFoundError, AttributeError):
            mtime = None
        return raw, raw, mtime

    def replace(self, key, data: bytes, version: bytes) -> bytes:
        current = self._read(key)
        if current is None:
            raise FileNotFoundError(str(key))
        if current != version:
            raise _Conflict(str(key))
        return self._write_and_check(key, data, _Conflict)

    def delete(self, key, version: bytes) -> None:
        if self._read(key) != version:
            raise _Conflict(str(key))
        fs, path = _fs_and_path(key)
        _retry(fs.rm_file, path)
