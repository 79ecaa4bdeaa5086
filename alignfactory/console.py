"""Where a run's output goes: the console shows progress lines, warnings and the cost table; the
rest (the driver's INFO log, every Ray worker's stdout/stderr such as weight-loading bars, Ray Data's
memory advice) is appended to <run dir>/run.log. `alignfactory run -v` prints all of it here too.

    log_file = attach_run_log(run_dir, verbose)   # before Runner.run()
    route_worker_output(verbose)                  # after ray.init(log_to_driver=True)
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

LOG_NAME = "run.log"
_FMT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
_file_handler: logging.FileHandler | None = None


_upload: tuple | None = None  # (local log, its place in a run dir on object storage): sync_run_log


def attach_run_log(run_dir, verbose: bool) -> Path:
    """Append INFO and up to <run_dir>/run.log; console handlers show INFO only when verbose. A run
    dir on object storage (which appends nothing) logs to a local file, seeded with the run's earlier
    log and uploaded whole by sync_run_log(); the path returned is the local file."""
    global _file_handler, _upload
    from alignfactory import storage

    root = logging.getLogger()
    for h in root.handlers:  # first: reaching a store logs at INFO (botocore's credential lookup)
        if h is not _file_handler:
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    if storage.is_local(run_dir):
        run_dir = storage.location(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path, _upload = run_dir / LOG_NAME, None
    else:
        import hashlib
        import tempfile

        remote = storage.location(run_dir) / LOG_NAME
        where = hashlib.sha1(str(remote).encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / "alignfactory-logs" / where / LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(remote.read_bytes() if remote.exists() else b"")
        _upload = (path, remote)
    if _file_handler is not None:  # a second run in one process (tests): one file at a time
        root.removeHandler(_file_handler)
        _file_handler.close()
    _file_handler = logging.FileHandler(path, encoding="utf-8")
    _file_handler.setFormatter(_FMT)
    _file_handler.setLevel(logging.INFO)
    root.addHandler(_file_handler)
    root.setLevel(logging.INFO)
    return path


def sync_run_log() -> None:
    """Upload the local log of a run dir on object storage to <run_dir>/run.log (no-op otherwise)."""
    if _upload is not None:
        from alignfactory import storage

        if _file_handler is not None:
            _file_handler.flush()
        storage.write_atomic(_upload[1], _upload[0].read_bytes())


def route_worker_output(verbose: bool) -> bool:
    """Send Ray workers' stdout/stderr and Ray Data's console log to the run log instead of the
    console (unless verbose). Ray's printer of worker lines is a handler on a dispatcher in
    ray._private.worker (Ray 2.60); if that is gone in another Ray, its lines stay on the console
    and this returns False."""
    if verbose or _file_handler is None:
        return False
    data_log = logging.getLogger("ray.data")  # propagate=False, its own console handler
    for h in data_log.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(max(h.level, logging.ERROR))
    if _file_handler not in data_log.handlers:
        data_log.addHandler(_file_handler)
    try:
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        if "ray_print_logs" not in [name for name, _ in dispatcher.handlers]:
            return False
        dispatcher.remove_handler("ray_print_logs")
    except (ImportError, AttributeError):
        return False
    workers = logging.getLogger("alignfactory.workers")

    def to_log(data: dict) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({who} pid={data.get('pid')})"
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status dump every few seconds: events only, as Ray does
            try:
                lines = list(ray_worker.filter_autoscaler_events(lines))
            except Exception:  # noqa: BLE001 (it asks the GCS which autoscaler runs; none: keep nothing)
                lines = []
        for line in lines:
            workers.info("%s %s", prefix, line.rstrip())

    dispatcher.add_handler("alignfactory_run_log", to_log)
    return True


@contextmanager
def no_progress_bars():
    """transformers' "Loading weights" bar off for a load (a model or embedder loads in well under a
    second here; the bar is noise on a console, or in every Ray worker's output), then as it was."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
