"""Online DPO (Qwen2 report's last step), built against TRL 1.16.

Per step, for `prompts_per_step` prompts (split across Ray Train workers when there are several):

    1. sample N completions per prompt from the current policy      transformers (CPU) | vLLM (GPU)
    2. score each completion                                         scorers.Scorers (reward model,
                                                                     math, code, AutoIF, judge)
    3. best and worst completion -> one pair                         select_pair: ties skipped and
                                                                     counted, margin >= min_margin
    4. one DPO step on the pairs against a frozen reference          sigmoid loss on summed
       (the DPO checkpoint)                                          completion log-probs

TRL 1.16's experimental OnlineDPOTrainer samples exactly 2 completions and has no judges, so the loop
is ours; from TRL it takes `selective_log_softmax` (per-token log-probs without the full softmax)
and `pad`, and the loss is DPOTrainer's sigmoid loss: -log σ(β((π_c - ref_c) - (π_r - ref_r))).

Each step appends one line to <output_dir>/log.jsonl (worker r > 0: log.rank<r>.jsonl, its share):
prompt_index, pairs, ties_skipped, low_margin_skipped, unscored_skipped, reward_chosen,
reward_rejected, margin, loss, kl (per token, policy vs reference, on the sampled pairs),
t_generate_s, t_score_s, t_optimize_s. Checkpoints: <output_dir>/checkpoint-<k>/ (model, tokenizer,
optimizer.pt, state.json); a restart resumes from the newest one and cuts the log back to its step.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from alignfactory import io
from alignfactory.train.common import ConfigError, ensure_model

log = logging.getLogger(__name__)


class ScorerConfig(BaseModel, extra="forbid"):
    kind: Literal["auto", "reward_model", "math", "code", "autoif", "judge"] = "auto"
    reward_model: str | None = None  # a `trl reward` checkpoint dir
    judge_model: str | None = None  # "embedded" or a model path; used by kind judge (or auto without a RM)
    sandbox_limits: dict = {"wall_s": 4.0, "memory_mb": 512}
    allow_unsafe: bool = False  # run code without isolation if bwrap is missing: never in CI


class OnlineDPOConfig(BaseModel, extra="forbid"):
    policy: str  # the DPO checkpoint: the starting policy
    reference: str | None = None  # frozen reference; None = the policy's starting weights
    prompts: list[str] = Field(min_length=1)  # JSONL files or run dirs (their sft/ and preference/)
    output_dir: str = "runs/train/online_dpo"
    n: int = Field(8, ge=2)  # completions sampled per prompt
    min_margin: float = Field(0.0, ge=0)  # best - worst must be >= this (and > 0: ties are skipped)
    scorer: ScorerConfig = ScorerConfig()
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(5e-7, gt=0)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    steps: int = Field(100, ge=1)
    prompts_per_step: int = Field(4, ge=1)  # per worker
    max_prompt_length: int = Field(512, ge=8)  # tokens; longer prompts keep their end
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    engine: Literal["auto", "transformers", "vllm"] = "auto"
    gpu_memory_utilization: float = 0.3  # vLLM beside the policy and reference on one GPU
    bf16: bool = False
    use_cpu: bool = False
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    seed: int = 0


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> OnlineDPOConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"online DPO config not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: YAML error: {e}") from None
    try:
        return OnlineDPOConfig(**(raw | (overrides or {})))
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{p}: {where}") from None


# ---- prompts ---------------------------------------------------------------------------------------

VERIFIER_KEYS = ("answer", "entry_point", "tests", "verifier")


def prompt_row(row: dict, where: str) -> dict:
    """One prompt from any factory format: preference {"prompt"}, SFT {"messages"} (the turns before
    the last assistant one), a seed line {"instruction"} (its answer/tests/verifier kept for scoring)."""
    from alignfactory import records

    if isinstance(row.get("prompt"), list):
        prompt = row["prompt"]
    elif isinstance(row.get("messages"), list):
        prompt = records.prompt_messages(row)
    elif isinstance(row.get("instruction"), str):
        text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        prompt = [{"role": "user", "content": text}]
    else:
        raise ConfigError(f"{where}: no prompt, messages or instruction")
    if not prompt or prompt[-1]["role"] != "user":
        raise ConfigError(f"{where}: the prompt does not end with a user turn")
    seed = row.get("seed") or {}
    extra = {k: row.get(k, seed.get(k)) for k in VERIFIER_KEYS if row.get(k, seed.get(k)) is not None}
    return {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt]} | extra


def load_prompts(sources: list[str]) -> list[dict]:
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():  # a run dir: its sft/ and preference/ prompts
            files += [f for f in (p / "sft/train.jsonl", p / "preference/train.jsonl") if f.is_file()]
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"prompts: not found: {s}")
    rows, seen = [], set()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    r = prompt_row(json.loads(line), f"{f}:{i}")
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{f}:{i}: not JSON: {e}") from None
                key = json.dumps(r["prompt"], ensure_ascii=False)
                if key not in seen:  # one preference prompt may carry several pairs
                    seen.add(key)
                    rows.append(r)
    if not rows:
        raise ConfigError(f"prompts: no rows in {', '.join(sources)}")
    return rows


# ---- best/worst selection ------------------------------------------------------------------------


@dataclass
class Pair:
    chosen: int | None  # completion index, None when skipped
    rejected: int | None
    margin: float
    status: str  # "pair" | "tie" | "low_margin" | "unscored"


def select_pair(scores: list[float | None], min_margin: float = 0.0) -> Pair:
    """Best and worst of N scored completions. Unscorable completions (None) are left out; fewer than
    two scored -> "unscored"; best == worst -> "tie" (nothing to learn); best - worst < min_margin ->
    "low_margin". The best is the first of equal maxima, the worst the last of equal minima."""
    valid = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(valid) < 2:
        return Pair(None, None, 0.0, "unscored")
    best = max(valid, key=lambda t: (t[0], -t[1]))
    worst = min(valid, key=lambda t: (t[0], -t[1]))
    margin = best[0] - worst[0]
    if margin <= 0:
        return Pair(None, None, 0.0, "tie")
    if margin < min_margin:
        return Pair(None, None, margin, "low_margin")
    return Pair(best[1], worst[1], margin, "pair")


# ---- the trainer ---------------------------------------------------------------------------------


def dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    cks = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "state.json").is_file()]
    return max(cks, key=lambda p: int(p.name.split("-")[1])) if cks else None


class OnlineDPO:
    def __init__(self, cfg: OnlineDPOConfig, resume: bool | str | os.PathLike = True):
        """resume: True = the newest checkpoint-<k>/ in output_dir, a path = that checkpoint."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from alignfactory.train.scorers import Scorers

        self.cfg = cfg
        self.rank, self.world = dist_info()
        cuda = torch.cuda.is_available() and not cfg.use_cpu
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
        dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        policy = ensure_model(cfg.policy)
        self.start_step, start = 0, policy
        ck = latest_checkpoint(cfg.output_dir) if resume is True else (Path(resume) if resume else None)
        if ck is not None:
            self.start_step, start = json.loads((ck / "state.json").read_text())["step"], str(ck)
            log.info("online DPO: resuming from %s (step %d)", ck, self.start_step)
        self.tok = AutoTokenizer.from_pretrained(start)
        self.tok.padding_side = "left"  # generation: prompts end where completions start
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(start, dtype=dtype).to(self.device)
        self.ref = AutoModelForCausalLM.from_pretrained(cfg.reference or policy, dtype=dtype).to(self.device)
        self.ref.eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        if ck is not None and (ck / "optimizer.pt").is_file():
            self.opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location=self.device))
        self.prompts = load_prompts(cfg.prompts)
        self._order: tuple[int | None, list[int]] = (None, [])  # (epoch, its shuffled prompt order)
        self.scorers = Scorers(
            cfg.scorer.kind,
            cfg.scorer.reward_model,
            cfg.scorer.judge_model,
            cfg.scorer.sandbox_limits,
            cfg.scorer.allow_unsafe,
            device=str(self.device),
        )
        use_vllm = cfg.engine == "vllm" or (cfg.engine == "auto" and cuda and _has_vllm())
        self.vllm = self._start_vllm(start) if use_vllm else None

    # 1. sampling -----------------------------------------------------------------------------------

    def prompt_ids(self, rows: list[dict]) -> list[list[int]]:
        ids = [
            self.tok.apply_chat_template(
                r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            for r in rows
        ]
        return [list(x)[-self.cfg.max_prompt_length :] for x in ids]

    def generate(self, prompt_ids: list[list[int]], step: int) -> list[list[list[int]]]:
        """N completions per prompt, as token ids ending with eos (or cut at max_new_tokens)."""
        if self.vllm is not None:
            return self._generate_vllm(prompt_ids, step)
        import torch

        torch.manual_seed(self.cfg.seed * 1_000_003 + step * 1009 + self.rank)
        enc = self.tok.pad({"input_ids": prompt_ids}, return_tensors="pt").to(self.device)
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                top_k=0,
                max_new_tokens=self.cfg.max_new_tokens,
                num_return_sequences=self.cfg.n,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
            )
        gen = out[:, enc["input_ids"].shape[1] :].tolist()  # (P*N, T): prompt-major order
        comps = [self._cut(g) for g in gen]
        return [comps[i * self.cfg.n : (i + 1) * self.cfg.n] for i in range(len(prompt_ids))]

    def _cut(self, ids: list[int]) -> list[int]:
        eos = self.tok.eos_token_id
        return ids[: ids.index(eos) + 1] if eos in ids else ids

    def _start_vllm(self, path: str):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: weights reachable
        from vllm import LLM

        kw = {"distributed_executor_backend": "external_launcher"} if self.world > 1 else {}
        return LLM(
            model=path,
            dtype="bfloat16" if self.cfg.bf16 else "float32",
            seed=self.cfg.seed + self.rank,
            gpu_memory_utilization=self.cfg.gpu_memory_utilization,
            enable_prefix_caching=False,
            max_model_len=self.cfg.max_prompt_length + self.cfg.max_new_tokens,
            **kw,
        )

    def _generate_vllm(self, prompt_ids, step):
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(
            n=self.cfg.n,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_new_tokens,
            seed=self.cfg.seed * 1_000_003 + step * 1009 + self.rank,
        )
        outs = self.vllm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], sp, use_tqdm=False)
        return [[self._cut(list(c.token_ids)) for c in o.outputs] for o in outs]

    def _sync_vllm(self) -> None:
        """Push the updated policy weights into the colocated vLLM engine (as TRL's colocate mode does)."""
        ex = self.vllm.llm_engine.model_executor.driver_worker
        runner = getattr(ex, "model_runner", None) or ex.worker.model_runner
        runner.model.load_weights(list(self.model.named_parameters()))
        self.vllm.reset_prefix_cache()

    # 4. the DPO step ---------------------------------------------------------------------------------

    def logps(self, model, seqs: list[tuple[list[int], list[int]]]):
        """Summed log-prob of each completion given its prompt, and its token count: (B,), (B,)."""
        import torch
        from trl.trainer.utils import pad, selective_log_softmax

        ids = [torch.tensor(p + c) for p, c in seqs]
        mask = [torch.tensor([0] * len(p) + [1] * len(c)) for p, c in seqs]  # 1 on completion tokens
        input_ids = pad(ids, padding_value=self.tok.pad_token_id, padding_side="right").to(self.device)
        attn = pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="right").to(self.device)
        comp = pad(mask, padding_value=0, padding_side="right").to(self.device)
        logits = model(input_ids=input_ids, attention_mask=attn).logits[:, :-1].float()  # (B, L-1, V)
        per_tok = selective_log_softmax(logits, input_ids[:, 1:])  # log p(token t+1 | ..t): (B, L-1)
        m = comp[:, 1:].float()
        return (per_tok * m).sum(-1), m.sum(-1)

    def dpo_step(self, pairs: list[tuple[list[int], list[int], list[int]]]) -> dict:
        """pairs: (prompt ids, chosen ids, rejected ids). One optimizer step, gradients averaged over
        workers (a worker without pairs adds zeros). With no pair on any worker there is no step at
        all: AdamW would still move the weights (momentum, weight decay) on zero gradients."""
        import torch
        import torch.nn.functional as F

        self.model.train()
        self.opt.zero_grad(set_to_none=False)
        stats = {"loss": 0.0, "kl": 0.0}
        if pairs:
            seqs = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]  # concatenated forward
            pol, ntok = self.logps(self.model, seqs)
            with torch.no_grad():
                ref, _ = self.logps(self.ref, seqs)
            k = len(pairs)
            logits = self.cfg.beta * ((pol[:k] - ref[:k]) - (pol[k:] - ref[k:]))
            loss = -F.logsigmoid(logits).mean()
            loss.backward()
            with torch.no_grad():
                stats = {
                    "loss": loss.item(),
                    # k1 estimate of KL(policy || reference) per token, on policy samples
                    "kl": ((pol - ref).sum() / ntok.sum()).item(),
                    "implicit_reward_chosen": (self.cfg.beta * (pol[:k] - ref[:k])).mean().item(),
                    "implicit_reward_rejected": (self.cfg.beta * (pol[k:] - ref[k:])).mean().item(),
                    "implicit_accuracy": (logits > 0).float().mean().item(),
                }
        total = len(pairs)
        if self.world > 1:
            import torch.distributed as dist

            n = torch.tensor([total], device=self.device)
            dist.all_reduce(n)
            total = int(n.item())
            for p in self.model.parameters():
                if total and p.grad is None:
                    p.grad = torch.zeros_like(p)
                if total:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        stats["optimizer_step"] = total > 0
        stats["grad_norm"] = 0.0
        if total:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            stats["grad_norm"] = float(norm)
            self.opt.step()
        return stats

    # the loop ----------------------------------------------------------------------------------------

    def batch_indices(self, step: int) -> list[int]:
        """This worker's prompt indices for `step`. An epoch is ceil(n / (k * world)) steps over one
        seeded shuffle; in step s of it, rank r takes positions s*k*world + r*k .. + k-1, and the
        epoch's last step wraps to the start of the same order (as torch's DistributedSampler
        pads). So a step's ranks never share a prompt (while k * world <= n), and every epoch
        covers every prompt."""
        k, n = self.cfg.prompts_per_step, max(1, len(self.prompts))
        per = k * self.world
        epoch, s = divmod(step, -(-n // per))
        order = self.epoch_order(epoch)
        return [order[(s * per + self.rank * k + j) % n] for j in range(k)]

    def epoch_order(self, epoch: int) -> list[int]:
        if self._order[0] != epoch:
            order = list(range(len(self.prompts)))
            random.Random(self.cfg.seed + epoch).shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def step(self, step: int) -> dict:
        idx = self.batch_indices(step)
        rows = [self.prompts[i] for i in idx]
        t0 = time.perf_counter()
        pids = self.prompt_ids(rows)
        comps = self.generate(pids, step)
        t1 = time.perf_counter()
        texts = [[self.tok.decode(c, skip_special_tokens=True) for c in cs] for cs in comps]
        scores, kinds = self.scorers.score(rows, texts)
        t2 = time.perf_counter()
        pairs, chosen_r, rejected_r, margins = [], [], [], []
        counts = {"pair": 0, "tie": 0, "low_margin": 0, "unscored": 0}
        for p, cs, sc in zip(pids, comps, scores, strict=True):
            sel = select_pair(sc, self.cfg.min_margin)
            counts[sel.status] += 1
            if sel.status == "pair":
                pairs.append((p, cs[sel.chosen], cs[sel.rejected]))
                chosen_r.append(sc[sel.chosen])
                rejected_r.append(sc[sel.rejected])
                margins.append(sel.margin)
        opt = self.dpo_step(pairs)
        if self.vllm is not None:
            self._sync_vllm()
        t3 = time.perf_counter()
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "step": step + 1,
            "rank": self.rank,
            "prompts": len(rows),
            "prompt_index": idx,  # which prompts (this worker's share of the step)
            "pairs": counts["pair"],
            "ties_skipped": counts["tie"],
            "low_margin_skipped": counts["low_margin"],
            "unscored_skipped": counts["unscored"],
            "scorers": {k: kinds.count(k) for k in set(kinds)} if kinds else {},
            "reward_chosen": mean(chosen_r),
            "reward_rejected": mean(rejected_r),
            "margin": mean(margins),
            "completion_tokens": sum(len(c) for cs in comps for c in cs),
            **opt,
            "t_generate_s": round(t1 - t0, 3),
            "t_score_s": round(t2 - t1, 3),
            "t_optimize_s": round(t3 - t2, 3),
        }

    def save(self, step: int) -> Path:
        """checkpoint-<step>/ (rank 0 writes; the final model also goes to output_dir itself)."""
        import torch

        out = Path(self.cfg.output_dir)
        ck = out / f"checkpoint-{step}"
        if self.rank == 0:
            tmp = out / f".checkpoint-{step}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            self.tok.save_pretrained(tmp)
            torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step}))  # written last: marks it complete
            shutil.rmtree(ck, ignore_errors=True)
            tmp.rename(ck)
            old = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            for p in old[: -self.cfg.save_total_limit]:
                shutil.rmtree(p, ignore_errors=True)
        return ck

    def log_path(self) -> Path:
        """log.jsonl (rank 0) or log.rank<r>.jsonl: each worker logs its own share of every step."""
        return Path(self.cfg.output_dir) / (f"log.rank{self.rank}.jsonl" if self.rank else "log.jsonl")

    def _cut_log(self) -> None:
        """Keep only the lines of steps up to start_step: a worker killed after its last checkpoint
        logged steps that the resumed run does again (a fresh run, start_step 0, starts a new log). A
        line cut off by the kill is dropped too."""
        path = self.log_path()
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= self.start_step:
                keep.append(line + "\n")
        io.write_atomic(path, "".join(keep).encode("utf-8"))

    def train(self, on_checkpoint=None) -> dict:
        """Run to cfg.steps; `on_checkpoint(path, step_log)` after each checkpoint (Ray Train reports)."""
        out = Path(self.cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._cut_log()
        logs = []
        for step in range(self.start_step, self.cfg.steps):
            rec = self.step(step)
            logs.append(rec)
            with open(self.log_path(), "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            log.info("online DPO step %d: %s", step + 1, rec)
            done = step + 1 == self.cfg.steps
            if done or (step + 1) % self.cfg.save_steps == 0:
                ck = self.save(step + 1)
                if on_checkpoint is not None:
                    on_checkpoint(ck, rec)
        if self.rank == 0:
            self.model.save_pretrained(out)
            self.tok.save_pretrained(out)
        self.scorers.close()
        return {"output_dir": str(out), "log": logs}


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def train(config: str | os.PathLike, overrides: dict | None = None, on_checkpoint=None, resume=True) -> dict:
    cfg = load_config(config, overrides)
    return OnlineDPO(cfg, resume).train(on_checkpoint)
