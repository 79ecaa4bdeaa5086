"""The same training code on Ray Train workers: `alignfactory train <step> --workers K --gpus-per-worker G`.

    TorchTrainer(K workers, G GPUs or 1 CPU each)        Ray Train sets up the process group (NCCL/gloo)
      each worker: common.train(step, ...) or online_dpo  TRL's Trainer sees RANK/WORLD_SIZE: DDP
      rank 0 reports each saved checkpoint to Ray         -> <storage_path>/<name>/checkpoint_*/checkpoint
      a worker dies -> Ray restarts the group (FailureConfig.max_failures) and every worker resumes
      from ray.train.get_checkpoint(); re-running with the same name + storage_path resumes too.

Only rank 0 reports a checkpoint, after a barrier (the stock RayTrainReportCallback lets every rank
copy its folder; once in four runs that left a 0-byte config.json, see FACTS.md). Each worker
writes to <storage_path>/<name>/workers/:
    rank-<r>.pid             its pid (tests kill a worker mid-run)
    rank-<r>.reported        the last step it reported
    rank-<r>.resumed         {"path", "step"}: the Ray checkpoint a restarted worker continued from
    rank-<r>.batches.jsonl   TRL steps, with ALIGNFACTORY_TRAIN_RECORD_ROWS=1 where `launch` runs (an
                             audit for tests: it copies every batch to the CPU): per optimizer
                             step, a short hash of each row it trained on
                             (a resumed worker appends; online DPO logs its prompt_index in its own
                             log.rank<r>.jsonl instead)
    rank-<r>.final.json      {"step", "weights"}: a digest of its final weights; with gradients
                             synchronised every rank ends with the same digest
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _report_callback():
    """A transformers TrainerCallback: after every save, barrier, then rank 0 reports checkpoint-<k>."""
    from transformers import TrainerCallback

    class RankZeroReport(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            import ray.train
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank has finished writing its part of checkpoint-<k>
            metrics = {"step": state.global_step, **(state.log_history[-1] if state.log_history else {})}
            ck = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ck.is_dir():
                with tempfile.TemporaryDirectory() as tmp:
                    shutil.copytree(ck, Path(tmp) / "checkpoint")
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics, checkpoint=None)
            _mark_reported(state.global_step)

    return RankZeroReport()


def _rank_log_callback(record_rows: bool):
    """A TrainerCallback that writes rank-<r>.final.json and, with record_rows, rank-<r>.batches.jsonl
    (which rows this worker trained on, as hashes of their token ids, seen by a forward pre-hook on
    the policy). The hook copies every batch to the CPU (a sync per forward on GPU): an audit for
    tests (ALIGNFACTORY_TRAIN_RECORD_ROWS=1 where `launch` runs), not for production runs."""
    from transformers import TrainerCallback

    class RankLog(TrainerCallback):
        def __init__(self):
            self.rows: list[str] = []  # this optimizer step's rows

        def on_train_begin(self, args, state, control, model=None, **kw):
            import torch

            if not record_rows:
                return

            def hook(module, a, kwargs):
                ids = kwargs.get("input_ids", a[0] if a else None)
                if module.training and torch.is_grad_enabled() and isinstance(ids, torch.Tensor):
                    self.rows += [_digest([r.cpu().numpy().tobytes()], 8) for r in ids]

            if model is not None:
                model.register_forward_pre_hook(hook, with_kwargs=True)

        def on_step_end(self, args, state, control, **kw):
            if not record_rows:
                return
            _write_rank_file(
                "batches.jsonl", json.dumps({"step": state.global_step, "rows": self.rows}) + "\n"
            )
            self.rows = []

        def on_train_end(self, args, state, control, model=None, **kw):
            if model is not None:
                _mark_final(model, state.global_step)

    return RankLog()


def _digest(chunks, n: int = 16) -> str:
    import hashlib

    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:n]


def weights_digest(model) -> str:
    """sha256 over every parameter (name and fp32 bytes, in name order): equal digests, equal weights."""
    params = sorted(model.named_parameters())
    return _digest(x for n, p in params for x in (n.encode(), p.detach().float().cpu().numpy().tobytes()))


def _write_rank_file(suffix: str, text: str, append: bool = True) -> None:
    d = os.environ.get("ALIGNFACTORY_TRAIN_RUN_DIR")
    if d:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        with open(Path(d) / "workers" / f"rank-{rank}.{suffix}", "a" if append else "w") as f:
            f.write(text)


def _mark_final(model, step: int) -> None:
    _write_rank_file("final.json", json.dumps({"step": step, "weights": weights_digest(model)}), append=False)


def _mark_reported(step: int) -> None:
    """workers/rank-<r>.reported: the last step this worker reported (tests wait for it)."""
    _write_rank_file("reported", str(step), append=False)


def _loop(cfg: dict) -> None:
    """Runs in every worker."""
    import ray.train

    if Path(cfg["cwd"]).is_dir():  # relative paths in the YAML mean what they mean for the driver
        os.chdir(cfg["cwd"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    pids = Path(cfg["run_dir"]) / "workers"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank-{rank}.pid").write_text(str(os.getpid()))
    os.environ["ALIGNFACTORY_TRAIN_RUN_DIR"] = cfg["run_dir"]
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg["threads"]))
    import torch

    torch.set_num_threads(cfg["threads"])
    ckpt = ray.train.get_checkpoint()
    resume_dir = None
    if ckpt is not None:  # a restarted group (or a re-run of the same name): continue from Ray's copy
        local = Path(ckpt.path) / "checkpoint"  # storage on a shared filesystem: read it in place
        if not local.is_dir():  # remote storage (s3://, gs://): download once per worker
            local = Path(ckpt.to_directory(tempfile.mkdtemp(prefix=f"resume-r{rank}-"))) / "checkpoint"
        resume_dir = local
        state = resume_dir / "trainer_state.json"  # TRL checkpoints; online DPO's have state.json
        state = state if state.is_file() else resume_dir / "state.json"
        step = json.loads(state.read_text()).get("global_step", json.loads(state.read_text()).get("step"))
        (pids / f"rank-{rank}.resumed").write_text(json.dumps({"path": str(resume_dir), "step": step}))
    if cfg["step"] == "online-dpo":
        from alignfactory.train import online_dpo

        def report(path, rec):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            metrics = {k: v for k, v in rec.items() if isinstance(v, int | float)}
            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    shutil.copytree(path, Path(tmp) / "checkpoint")
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics, checkpoint=None)
            _mark_reported(rec["step"])

        overrides = dict(cfg["online_overrides"])
        if cfg["gpus"] == 0:
            overrides["use_cpu"] = True
        # resume only from Ray's checkpoint: output_dir may hold a newer one nobody reported
        trainer = online_dpo.OnlineDPO(online_dpo.load_config(cfg["config"], overrides), resume_dir or False)
        result = trainer.train(on_checkpoint=report)
        _mark_final(trainer.model, trainer.cfg.steps)
    else:
        from alignfactory.train import common

        overrides = list(cfg["overrides"]) + (["--use_cpu", "true"] if cfg["gpus"] == 0 else [])
        result = common.train(
            cfg["step"],
            cfg["config"],
            overrides,
            cfg["data"],
            callbacks=[_report_callback(), _rank_log_callback(cfg["record_rows"])],
            resume=str(resume_dir) if resume_dir else None,
        )
        result = {"output_dir": result["output_dir"], "metrics": result["metrics"]}
    if rank == 0:
        (Path(cfg["run_dir"]) / "result.json").write_text(json.dumps(result, default=str))


def launch(
    step: str,
    config: str,
    overrides: list[str] | None = None,
    data: list[str] | None = None,
    online_overrides: dict | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    storage_path: str = "runs/ray_train",
    name: str | None = None,
    max_failures: int = 2,
) -> dict:
    """Train on `workers` Ray Train workers; returns the rank-0 result ({"output_dir", ...}) plus
    the Ray checkpoint path. Needs a Ray cluster (ray.init() here connects to RAY_ADDRESS or starts
    a local one); with CPU workers, nothing else should hold the CPUs they ask for."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = Path(storage_path).resolve()  # Ray Train wants an absolute path (or a URI)
    name = name or f"{step}-{Path(config).stem}"
    run_dir = storage / name
    if not ray.is_initialized():
        ray.init()
    gpus = float(gpus_per_worker)
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus} if gpus else {})
    trainer = TorchTrainer(
        _loop,
        train_loop_config={
            "step": step,
            "config": str(Path(config).resolve()),
            "overrides": overrides or [],
            "data": [str(Path(d).resolve()) for d in data or []] or None,
            "online_overrides": online_overrides or {},
            "gpus": gpus,
            "threads": max(1, int(cpus_per_worker)),
            "run_dir": str(run_dir),
            "cwd": os.getcwd(),
            "record_rows": os.environ.get("ALIGNFACTORY_TRAIN_RECORD_ROWS") == "1",  # rank-<r>.batches.jsonl
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    res = trainer.fit()
    out = json.loads((run_dir / "result.json").read_text())
    out["checkpoint"] = res.checkpoint.path if res.checkpoint else None
    return out
