"""The same training code on Ray Train workers: `alignfactory train <step> --workers K --gpus-per-worker G`.

    TorchTrainer(K workers, G GPUs or 1 CPU each)        Ray Train sets up the process group (NCCL/gloo)
      each worker: common.train(step, ...) or online_dpo  TRL's Trainer sees RANK/WORLD_SIZE: DDP
      rank 0 reports each saved checkpoint to Ray         -> <storage_path>/<name>/checkpoint_*/checkpoint
      a worker dies -> Ray restarts the group (FailureConfig.max_failures) and every worker resumes
      from ray.train.get_checkpoint(); re-running with the same name + storage_path resumes too.

Only rank 0 reports a checkpoint, after a barrier (the stock RayTrainReportCallback lets every rank
copy its folder; once in four runs that left a 0-byte config.json, see FACTS.md). Each worker
writes its pid to <storage_path>/<name>/workers/rank-<r>.pid and, after each report, the step to
rank-<r>.reported (tests kill a worker mid-run once a checkpoint is reported).
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


def _mark_reported(step: int) -> None:
    """workers/rank-<r>.reported: the last step this worker reported (tests wait for it)."""
    d = os.environ.get("ALIGNFACTORY_TRAIN_RUN_DIR")
    if d:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        (Path(d) / "workers" / f"rank-{rank}.reported").write_text(str(step))


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
        result = online_dpo.train(cfg["config"], overrides, on_checkpoint=report, resume=resume_dir or False)
    else:
        from alignfactory.train import common

        overrides = list(cfg["overrides"]) + (["--use_cpu", "true"] if cfg["gpus"] == 0 else [])
        result = common.train(
            cfg["step"],
            cfg["config"],
            overrides,
            cfg["data"],
            callbacks=[_report_callback()],
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
