"""`alignfactory ablate SPEC`: problems -> sampling runs -> data per arm -> leak check -> training ->
greedy eval -> statistics -> the table and <output>/ablation.json.

Everything a run makes is content-addressed under the output dir, so a killed ablation re-uses what
finished (a key is the sha256 of everything that changes the result; resources never enter it):

    problems/         train.jsonl (seed rows for the pipeline), eval.jsonl (the held-out items)
    runs/<run>-<key>/ a pipeline run (alignfactory.run.Runner: resumes by shard itself)
    data/<recipe>-<key>/  sft.jsonl, preference.jsonl, prompts.jsonl, info.json
    models/<step>-<key>/  a checkpoint; _DONE holds {steps, rows, worker_s} (written last)
    evals/<key>.json  per-item scores and completions of one model on one eval set
    ablation.json     the result (shape in the module doc of alignfactory/ablate/__init__.py's callers)

Jobs of one kind (training steps of one depth, evals) run one after another in this process
(--workers 0 or 1), or as Ray tasks, `workers` at a time, 1 CPU each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from alignfactory import io
from alignfactory.ablate import arms as armdata
from alignfactory.ablate import report as html_report
from alignfactory.ablate.spec import AblationSpec

log = logging.getLogger("alignfactory.ablate")
METRICS = {"math": "math_accuracy", "code": "code_pass_rate", "autoif": "constraint_pass_rate"}
# pass/fail per item: McNemar applies. reward_accuracy: a reward model scored the chosen side of a
# held-out pair above the rejected one (a tie is not a pass)
BINARY = {"math_accuracy", "constraint_pass_rate", "reward_accuracy"}
RESOURCES = re.compile(
    r"(^|\.)resources\.|^model\.threads$|^shard_size$"
)  # run set keys that change speed only
PASS_AT = {"math": "math", "code": "code", "autoif": "constraint"}  # pass@k metric name prefixes
PROBLEMS_VERSION = 2


class AblateError(RuntimeError):
    """The ablation cannot go on (bad eval file, a run without data); the message says why."""


class LeakError(AblateError):
    """An eval item is in an arm's training data."""


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- eval items -------------------------------------------------------------------------------------


def eval_prompt(item: dict, system: str | None, open_ended: bool = False) -> dict:
    """An eval item -> a scorer row {"prompt": messages, answer | entry_point+tests | verifier}; with
    open_ended (a reward model or judge scores replies) a bare prompt is an item too, with the system turn."""
    if item.get("question") is not None:
        msgs = [{"role": "user", "content": str(item["question"])}]
    elif isinstance(item.get("prompt"), str):
        msgs = [{"role": "user", "content": item["prompt"]}]
    elif isinstance(item.get("prompt"), list):
        msgs = [{"role": m["role"], "content": m["content"]} for m in item["prompt"]]
    else:
        raise AblateError(f"eval item {item.get('id', '?')}: no question or prompt")
    extra = {k: item[k] for k in ("answer", "entry_point", "tests", "verifier") if item.get(k) is not None}
    pair = pair_texts(item)
    if pair:
        extra["pair"] = pair
    bare = not (
        extra.get("answer") or (extra.get("entry_point") and extra.get("tests")) or extra.get("verifier")
    )
    if system and (item.get("answer") is not None or bare) and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs  # math items: the short-answer instruction
    if "answer" in extra:
        extra["answer"] = str(extra["answer"])
    if bare and not open_ended and not pair:
        raise AblateError(
            f"eval item {item.get('id', '?')}: nothing to score it by (needs answer, entry_point + tests, "
            "verifier, or chosen + rejected; or eval.reward_model / eval.judge in the spec)"
        )
    return {"prompt": msgs} | extra


def pair_texts(item: dict) -> tuple[str, str] | None:
    """(chosen, rejected) replies of a held-out pair, TRL's preference shape: strings, or message
    lists whose last assistant turn is the reply; None when the item carries no whole pair."""

    def reply(side):
        if isinstance(side, str):
            return side
        if isinstance(side, list):
            turns = [m.get("content") for m in side if isinstance(m, dict) and m.get("role") == "assistant"]
            return turns[-1] if turns and isinstance(turns[-1], str) else None
        return None

    chosen, rejected = reply(item.get("chosen")), reply(item.get("rejected"))
    return (chosen, rejected) if chosen is not None and rejected is not None else None


# ---- jobs (module-level functions: Ray ships them to workers) ----------------------------------------


def train_job(job: dict) -> dict:
    """One training step -> job["out"] (a checkpoint dir) + _DONE. Re-used when _DONE exists."""
    out = Path(job["out"])
    done = out / "_DONE"
    if done.is_file():
        return json.loads(done.read_text())
    os.chdir(job["cwd"])  # a Ray worker: configs name repo-relative paths (chat_template_path)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    step, n = job["step"], job["max_steps"]
    if step == "online-dpo":
        from alignfactory.train import online_dpo

        over = {
            "policy": job["model"],
            "reference": job["model"],
            "prompts": [job["data"]],
            "output_dir": str(tmp),
            "steps": n,
            "seed": job["seed"],
            "save_steps": n,
        }
        online_dpo.train(job["config"], over | job["set"], resume=False)
    else:
        from alignfactory.train import common

        over = {
            "model_name_or_path": job["model"],
            "output_dir": str(tmp),
            "max_steps": n,
            "seed": job["seed"],
            "save_strategy": "no",
        } | job["set"]
        args = [x for k, v in over.items() for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]
        common.train(step, job["config"], args, [job["data"]])
    result = {"steps": n, "rows": job["rows"], "worker_s": round(time.perf_counter() - t0, 2)}
    io.write_json_atomic(tmp / "_DONE", result)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return result


def eval_job(job: dict) -> dict:
    """One model on the eval rows: greedy completions (+ k samples for pass@k), scored -> job["out"]."""
    out = Path(job["out"])
    if out.is_file():
        return json.loads(out.read_text())
    if job.get("reward_model"):
        result = reward_eval(job["model_cfg"]["path"], job["rows"])
        io.write_json_atomic(out, result)
        return result
    from alignfactory.llm import ModelConfig, Sampling, make_engine
    from alignfactory.train.scorers import Scorers, kind_of

    t0 = time.perf_counter()
    rows, ev = job["rows"], job["eval"]
    engine = make_engine(ModelConfig(**job["model_cfg"]), batch_size=ev["batch_size"])
    convs = [r["prompt"] for r in rows]
    greedy = engine.chat(convs, Sampling(n=1, max_tokens=ev["max_new_tokens"], temperature=0.0, seed=0))
    k = ev.get("pass_at_k")
    sampled = (
        engine.chat(
            convs, Sampling(n=k, max_tokens=ev["max_new_tokens"], temperature=ev["temperature"], top_p=1.0)
        )
        if k
        else None
    )
    if hasattr(engine, "close"):
        engine.close()
    del engine
    scorers = Scorers("auto", allow_unsafe=ev.get("allow_unsafe", False))
    items: dict[str, list] = {}
    try:
        kinds = [kind_of(r, False, False) for r in rows]
        scores, _ = scorers.score(rows, [[o.texts[0]] for o in greedy])
        for kind, name in METRICS.items():
            if kind in kinds:
                items[name] = [s[0] if kd == kind else None for s, kd in zip(scores, kinds, strict=True)]
        if sampled is not None:
            many, _ = scorers.score(rows, [o.texts for o in sampled])
            for kind, prefix in PASS_AT.items():
                if kind in kinds:  # an item passes when one of its k samples scores full marks
                    items[f"{prefix}_pass@{k}"] = [
                        (float(any(x is not None and x >= 1.0 for x in s)) if kd == kind else None)
                        for s, kd in zip(many, kinds, strict=True)
                    ]
        if ev.get("reward_model"):
            rm = Scorers("reward_model", reward_model=ev["reward_model"])
            items["reward_mean"] = [s[0] for s in rm.score(rows, [[o.texts[0]] for o in greedy])[0]]
        if ev.get("judge"):
            items["judge_mean"] = judge_scores(
                ev["judge"], rows, [o.texts[0] for o in greedy], ev["batch_size"]
            )
    finally:
        scorers.close()
    result = {
        "items": items,
        "outputs": [o.texts[0] for o in greedy],
        "finish_reasons": [o.finish_reason(0) for o in greedy],
        "tokens": sum(o.completion_tokens for o in greedy) + sum(o.completion_tokens for o in sampled or []),
        "worker_s": round(time.perf_counter() - t0, 2),
    }
    io.write_json_atomic(out, result)
    return result


def reward_eval(checkpoint: str, rows: list[dict]) -> dict:
    """A reward-model arm: its accuracy on the held-out pairs (1.0 where it scores chosen above
    rejected, 0.0 where not, ties included; None for an item with no pair or an unreadable score).
    Nothing is generated: the outputs column shows each pair's two scores."""
    from alignfactory.train.scorers import Scorers

    t0 = time.perf_counter()
    at = [i for i, r in enumerate(rows) if r.get("pair")]
    acc: list[float | None] = [None] * len(rows)
    outputs = [""] * len(rows)
    if at:
        rm = Scorers("reward_model", reward_model=checkpoint)
        try:
            scores, _ = rm.score([rows[i] for i in at], [list(rows[i]["pair"]) for i in at])
        finally:
            rm.close()
        for i, (c, r) in zip(at, scores, strict=True):
            acc[i] = None if c is None or r is None else float(c > r)
            outputs[i] = f"reward(chosen) {_num(c)}, reward(rejected) {_num(r)}"
    return {
        "items": {"reward_accuracy": acc},
        "outputs": outputs,
        "finish_reasons": [None] * len(rows),
        "tokens": 0,
        "worker_s": round(time.perf_counter() - t0, 2),
    }


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def judge_scores(model: str, rows: list[dict], replies: list[str], batch_size: int) -> list[float | None]:
    """The pipeline's judge stage (pointwise helpfulness, rubrics/judge/, a structured {"reason", "score"}
    verdict) on each (prompt, reply): score / 10, or None where the verdict could not be read."""
    from alignfactory.llm import ModelConfig, make_engine
    from alignfactory.stages.base import StageContext
    from alignfactory.stages.synthesize.judge import Judge

    engine = make_engine(ModelConfig(path=None if model == "embedded" else model), batch_size=batch_size)
    try:
        stage = Judge(Judge.Params(on_unparseable="keep"), StageContext("judge", 0), engine=engine)
        judged = stage(
            [
                {"id": str(i), "meta": {}, "messages": r["prompt"] + [{"role": "assistant", "content": text}]}
                for i, (r, text) in enumerate(zip(rows, replies, strict=True))
            ]
        )
    finally:
        if hasattr(engine, "close"):
            engine.close()
    return [None if j["meta"]["judge"]["score"] is None else j["meta"]["judge"]["score"] / 10 for j in judged]


def execute(fn, jobs: list[dict], workers: int) -> list[dict]:
    """fn over jobs: here, in order (workers <= 1), or as Ray tasks with at most `workers` in flight."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    import ray

    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING)
    remote = ray.remote(num_cpus=1)(fn)
    refs, pending = {}, list(enumerate(jobs))
    results: list = [None] * len(jobs)
    while pending or refs:
        while pending and len(refs) < workers:
            i, job = pending.pop(0)
            refs[remote.remote(job)] = i
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            results[refs.pop(ref)] = ray.get(ref)
    return results


# ---- the ablation -------------------------------------------------------------------------------------


class Ablation:
    def __init__(
        self,
        spec: AblationSpec,
        spec_path: str,
        eval_file: str | None = None,
        output: str | None = None,
        workers: int = 0,
        limit: int | None = None,
    ):
        self.spec, self.spec_path = spec, spec_path
        self.eval_file, self.workers, self.limit = eval_file, workers, limit
        self.out = Path(output or spec.output or Path("runs") / spec.name).resolve()

    def run(self) -> dict:
        t0 = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        train_file, evals, eval_path = self.problems()
        ev = self.spec.eval
        rows = [eval_prompt(it, self.spec.system, bool(ev.reward_model or ev.judge)) for it in evals]
        runs = {name: self.pipeline(name, train_file) for name in sorted({d.run for d in self.used_data()})}
        data = {name: self.arm_data(name, runs[self.spec.data[name].run]) for name in self.used_names()}
        leaks = self.leak_check(evals, data)
        models = self.train_all(data)
        results = self.eval_all(models, rows)
        result = self.assemble(evals, eval_path, leaks, data, models, results)
        io.write_json_atomic(self.out / "ablation.json", result)
        log.info("report: %s", html_report.write(self.out))
        log.info("ablation done in %.1f s: %s", time.perf_counter() - t0, self.out / "ablation.json")
        return result

    def used_names(self) -> list[str]:
        return sorted({a.data for a in self.spec.arms if a.data})

    def used_data(self):
        return [self.spec.data[n] for n in self.used_names()]

    # -- problems and eval items

    def problems(self) -> tuple[Path, list[dict], Path]:
        """problems/train.jsonl (pipeline seed rows) and the eval items (the --eval file's, or mathset's)."""
        from alignfactory.ablate import mathset

        p = self.spec.problems
        seeds = [p.path, sha256_file(p.path)] if p.path else []  # (none: the keys of mathset problems stay)
        # PROBLEMS_VERSION: what mathset writes (2: eval items carry a held-out pair)
        d = (
            self.out
            / "problems"
            / key(p.model_dump(exclude={"path"}), self.spec.system, *seeds, PROBLEMS_VERSION)
        )
        train_file, eval_path = d / "train.jsonl", d / "eval.jsonl"
        if not train_file.is_file() and p.path:  # a seed file: a held-out split of its rows
            train, evals = armdata.split_seeds(io.read_jsonl(Path(p.path)), p.train, p.eval, p.seed)
            mathset.write_jsonl(evals, eval_path)
            mathset.write_jsonl(train, train_file)
        elif not train_file.is_file():
            train, evals = mathset.split_problems(p.train, p.eval, p.seed)
            mathset.write_jsonl(mathset.eval_rows(evals), eval_path)
            mathset.write_jsonl(armdata.seed_rows(train, self.spec.system), train_file)
        if self.eval_file:
            eval_path = Path(self.eval_file)
            if not eval_path.is_file():
                raise AblateError(f"--eval {eval_path}: no such file")
        try:
            evals = io.read_jsonl(eval_path)
        except (ValueError, OSError) as e:
            raise AblateError(f"--eval {eval_path}: {e}") from None
        if not evals:
            raise AblateError(f"{eval_path}: no eval items")
        return train_file, evals[: self.limit] if self.limit else evals, eval_path

    # -- data

    def pipeline(self, name: str, train_file: Path) -> dict:
        """Run (or resume, or re-use) one pipeline on the train problems; its manifest + run dir."""
        from alignfactory.run import Runner
        from alignfactory.spec import load_spec

        r, m = self.spec.runs[name], self.spec.model
        sets = [f"{k}={json.dumps(v)}" for k, v in r.set.items()] + [
            f"input.path={json.dumps(str(train_file))}"
        ]
        model = {"model": m.path, "backend": m.backend}
        results = [
            x for x in sets if not RESOURCES.search(x.split("=", 1)[0])
        ]  # how, not what: not in the key
        k = key(Path(r.pipeline).read_text("utf-8"), results, sha256_file(train_file), m.identity())
        out = self.out / "runs" / f"{name}-{k}"
        if not (out / "_ABLATE_DONE").is_file():
            log.info("run %s: %s -> %s", name, r.pipeline, out)
            spec = load_spec(r.pipeline, sets, output=str(out), **model)
            Runner(spec, r.pipeline, str(out)).run()
            (out / "_ABLATE_DONE").write_text("")
        manifest = json.loads((out / "manifest.json").read_text())
        stages = manifest["stages"]
        seconds = sum(s.get("seconds", 0) + s.get("load_seconds", 0) for s in stages)
        n = max([int(s.get("params", {}).get("n", 1)) for s in manifest["spec"]["stages"]] + [1])
        return {"dir": out, "worker_s": seconds, "samples_per_problem": n, "key": k}

    def arm_data(self, name: str, run: dict) -> dict:
        """data/<recipe>-<key>/: the recipe's rows as TRL files, and info.json (rows, tokens, worker_s)."""
        d = self.spec.data[name]
        k = key(run["key"], d.model_dump(), self.spec.problems.seed, armdata.VERSION)
        out = self.out / "data" / f"{name}-{k}"
        info_path = out / "info.json"
        if not info_path.is_file():
            paired = d.take in ("verified", "unverified", "gold")
            problems = armdata.problem_samples(run["dir"]) if paired else []
            built = armdata.build(d.take, problems, self.spec.problems.seed, d.rows, d.pick, run["dir"])
            if not built["sft"]:
                raise AblateError(
                    f"data recipe {name}: no training rows (run {d.run}: "
                    + (
                        "no problem with a verified sample; sample more problems or more samples per problem)"
                        if paired
                        else "no rows in its output)"
                    )
                )
            for part in ("sft", "preference", "prompts"):
                io.write_jsonl_atomic(out / f"{part}.jsonl", built[part])
            # the generation this data needed: the whole sampling run for verified rows (every
            # problem sampled n times, most of it thrown away); one sample per problem for unverified;
            # the whole run for sft, selected and random (every row of the pool got its response)
            share = {"unverified": 1 / run["samples_per_problem"], "gold": 0.0}.get(d.take, 1.0)
            info = {
                "recipe": f"{d.take} from run {d.run}"
                + (f" ({d.pick} verified sample)" if d.take == "verified" else ""),
                "rows": len(built["sft"]),
                "pairs": len(built["preference"]),
                "correct_rows": built["correct_rows"],
                "sft_tokens": armdata.count_tokens(built["sft"], self.base_path()),
                "pair_tokens": armdata.count_tokens(built["preference"], self.base_path()),
                "worker_s": round(run["worker_s"] * share, 2),
                "path": str(out),
                "problems": built["problems"],
            }
            io.write_json_atomic(info_path, info)
        return json.loads(info_path.read_text()) | {"dir": out, "key": k}

    def leak_check(self, evals: list[dict], data: dict) -> list[dict]:
        """Every arm's training rows (SFT, pairs, online prompts) against the eval items; a leak stops."""
        from alignfactory.ablate.leak import find_leaks

        leaks = []
        for arm in self.spec.arms:
            if not arm.data:
                continue
            d = data[arm.data]["dir"]
            rows = [
                r for part in ("sft", "preference", "prompts") for r in io.read_jsonl(d / f"{part}.jsonl")
            ]
            leaks += [lk | {"arm": arm.name} for lk in find_leaks(evals, rows)]
        io.write_json_atomic(self.out / "leak_check.json", leaks)
        if leaks:
            lines = [
                f"eval item {lk['eval_id']} is in arm {lk['arm']}'s training data ({lk['why']})"
                for lk in leaks
            ]
            more = f"\n... and {len(lines) - 10} more" if len(lines) > 10 else ""
            raise LeakError(
                "leak: " + "\n".join(lines[:10]) + more + f"\n(all: {self.out / 'leak_check.json'})"
            )
        return leaks

    # -- training

    def base_path(self) -> str:
        from alignfactory.llm.transformers_engine import resolve_model_path

        return resolve_model_path(self.spec.model)[0]

    def train_all(self, data: dict) -> dict:
        """{(arm, seed): {"checkpoint", "steps", "rows", "worker_s"}}; shared steps (verified SFT under
        verified + DPO) train once: a step's key is its model's key + its own definition + data + seed."""
        chains, levels = {}, {}
        for arm in self.spec.arms:
            if not arm.train:
                continue
            d = data[arm.data]
            for seed in self.spec.seeds:
                model, mkey, chain = self.base_path(), key(self.spec.model.identity()), []
                for depth, st in enumerate(self.spec.training[arm.train]):
                    part = {
                        "sft": "sft",
                        "dpo": "preference",
                        "reward": "preference",
                        "online-dpo": "prompts",
                    }[st.step]
                    f = d["dir"] / f"{part}.jsonl"
                    mkey = key(
                        mkey,
                        st.step,
                        Path(st.config_path).read_text("utf-8"),
                        st.max_steps,
                        st.set,
                        sha256_file(f),
                        seed,
                    )
                    out = self.out / "models" / f"{st.step}-{mkey}"
                    job = {
                        "step": st.step,
                        "config": st.config_path,
                        "cwd": os.getcwd(),
                        "set": st.set,
                        "max_steps": st.max_steps,
                        "model": model,
                        "data": str(f),
                        "rows": len(io.read_jsonl(f)),
                        "seed": seed,
                        "out": str(out),
                    }
                    levels.setdefault(depth, {})[str(out)] = job
                    chain.append(str(out))
                    model = str(out)
                chains[(arm.name, seed)] = chain
        done: dict[str, dict] = {}
        for depth in sorted(levels):
            jobs = list(levels[depth].values())
            log.info("training: %d step(s) at depth %d", len(jobs), depth)
            for job, res in zip(jobs, execute(train_job, jobs, self.workers), strict=True):
                done[job["out"]] = res
        return {
            arm_seed: {
                "checkpoint": chain[-1],
                "steps": sum(done[c]["steps"] for c in chain),
                "rows": sum(done[c]["rows"] for c in chain),
                "worker_s": round(sum(done[c]["worker_s"] for c in chain), 2),
            }
            for arm_seed, chain in chains.items()
        }

    # -- evaluation

    def eval_all(self, models: dict, rows: list[dict]) -> dict:
        """{checkpoint or "base": eval result}: one eval per distinct model."""
        ev = self.spec.eval.model_dump(exclude=set() if self.spec.eval.judge else {"judge"})  # (keys stay)
        rows_key = key(rows)
        jobs = {}
        cfg = self.spec.model.model_dump()
        for target in ["base"] + sorted({m["checkpoint"] for m in models.values()}):
            model_cfg = cfg if target == "base" else cfg | {"path": target}
            mkey = key(self.spec.model.identity()) if target == "base" else Path(target).name
            jobs[target] = {
                "model_cfg": model_cfg,
                "rows": rows,
                "eval": ev,
                "out": str(self.out / "evals" / f"{key(mkey, rows_key, ev)}.json"),
                # a reward model (its recipe's last step; train_all names checkpoints <step>-<key>)
                "reward_model": Path(target).name.startswith("reward-"),
            }
        log.info("evaluating %d model(s) on %d items", len(jobs), len(rows))
        return dict(zip(jobs, execute(eval_job, list(jobs.values()), self.workers), strict=True))

    # -- statistics and the result

    def assemble(self, evals, eval_path, leaks, data, models, results) -> dict:
        from alignfactory.ablate import stats
        from alignfactory.ablate.leak import LEAK_CHECK

        spec = self.spec
        metrics = sorted({m for r in results.values() for m in r["items"]})
        arms_out, per_item = [], {}  # per_item[(arm, metric)] = item scores averaged over seeds
        for arm in spec.arms:
            res = {
                s: results["base" if not arm.train else models[(arm.name, s)]["checkpoint"]]
                for s in spec.seeds
            }
            first = res[spec.seeds[0]]
            entry = {
                "name": arm.name,
                "data": self.data_entry(arm, data[arm.data]) if arm.data else None,
                "train": _train_entry(arm.train, models[(arm.name, spec.seeds[0])]) if arm.train else None,
                "seeds": list(spec.seeds),
                "metrics": {},
                "items": first["items"],
                "outputs": first["outputs"],
            }
            for m in metrics:
                cols = [res[s]["items"].get(m) or [None] * len(evals) for s in spec.seeds]
                avg = [_mean([c[i] for c in cols]) for i in range(len(evals))]
                per_item[(arm.name, m)] = avg
                ci = stats.bootstrap_ci([v for v in avg if v is not None])
                per_seed = {s: _mean(c) for s, c in zip(spec.seeds, cols, strict=True)}
                spread = stats.across_seeds([v for v in per_seed.values() if v is not None])
                entry["metrics"][m] = ci | {"std": spread["std"], "per_seed": per_seed}
            arms_out.append(entry)
        comparisons = []
        for a, b in spec.compare:
            for m in metrics:
                xa, xb = per_item[(a, m)], per_item[(b, m)]
                keep = [i for i in range(len(evals)) if xa[i] is not None and xb[i] is not None]
                if not keep:
                    continue
                binary = (m in BINARY or "_pass@" in m) and len(spec.seeds) == 1
                c = stats.compare([xa[i] for i in keep], [xb[i] for i in keep], binary)
                comparisons.append({"a": a, "b": b, "metric": m} | c)
        adj = stats.holm({str(i): c["p"] for i, c in enumerate(comparisons)})
        for i, c in enumerate(comparisons):
            c["p_holm"] = adj[str(i)]
        result = {
            "name": spec.name,
            "spec_path": self.spec_path,
            "eval": {
                "path": str(eval_path),
                "n_items": len(evals),
                "sha256": sha256_file(eval_path),
                "metrics": metrics,
            },
            "leak_check": {"compares": LEAK_CHECK, "leaks": leaks, "ok": not leaks},
            "arms": arms_out,
            "comparisons": comparisons,
        }
        result["table"] = table(result)
        return result

    def data_entry(self, arm, info: dict) -> dict:
        """The arm's data as trained on: its SFT rows, and its pairs only when its training has a DPO
        or reward step. A reward-only arm's rows are its pairs (correct_rows: none to count)."""
        steps = {st.step for st in self.spec.training[arm.train]}
        pairs = bool(steps & {"dpo", "reward"})
        rows = bool(steps - {"reward"})
        out = {k: info[k] for k in ("recipe", "worker_s", "path")}
        return out | {
            "rows": info["rows"] if rows else info["pairs"],
            "correct_rows": info["correct_rows"] if rows else None,
            "pairs": info["pairs"] if pairs else 0,
            "tokens": (info["sft_tokens"] if rows else 0) + (info["pair_tokens"] if pairs else 0),
        }


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _train_entry(recipe: str, m: dict) -> dict:
    return {
        "recipe": recipe,
        "steps": m["steps"],
        "rows": m["rows"],
        "worker_s": m["worker_s"],
        "checkpoint": m["checkpoint"],
    }


# ---- the printed table ----------------------------------------------------------------------------------


def _f(x, signed=False) -> str:
    return "-" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def table(result: dict) -> str:
    metrics = result["eval"]["metrics"]
    multi = len(result["arms"][0]["seeds"]) > 1
    head = ["arm", "data", "rows", "correct", "tokens", "data_s", "steps", "train_s"] + [
        f"{m} [95% CI]" + (" ±sd" if multi else "") for m in metrics
    ]
    body = []
    for a in result["arms"]:
        d, t = a["data"] or {}, a["train"] or {}
        cells = [
            a["name"],
            d.get("recipe", "base model").split(" from ")[0] if d else "base model",
            str(d.get("rows", "-")),
            "-" if d.get("correct_rows") is None else str(d["correct_rows"]),
            str(d.get("tokens", "-")),
            f"{d['worker_s']:.0f}" if d else "-",
            str(t.get("steps", "-")),
            f"{t['worker_s']:.0f}" if t else "-",
        ]
        for m in metrics:
            s = a["metrics"][m]
            cell = f"{_f(s['mean'])} [{_f(s['lo'])}, {_f(s['hi'])}]"
            cells.append(cell + (f" ±{s['std']:.3f}" if multi and s.get("std") is not None else ""))
        body.append(cells)
    lines = _grid(head, body)
    n = result["eval"]["n_items"]
    lines.append(
        f"eval: {n} items, greedy; rows = SFT rows (correct = how many of them verify), a reward model's: "
        "its pairs; tokens = training tokens (SFT rows + pairs); data_s / train_s = worker-seconds"
    )
    if result["comparisons"]:
        head2 = ["b - a", "metric", "diff", "95% CI", "p", "p_holm", "a_only", "b_only"]
        rows2 = [
            [
                f"{c['b']} - {c['a']}",
                c["metric"],
                _f(c["diff"], True),
                f"[{_f(c['lo'], True)}, {_f(c['hi'], True)}]",
                f"{c['p']:.3g}",
                f"{c['p_holm']:.3g}",
                str(c.get("a_only", "-")),
                str(c.get("b_only", "-")),
            ]
            for c in result["comparisons"]
        ]
        lines += [""] + _grid(head2, rows2)
        lines.append(
            "paired by item; p: exact McNemar (pass/fail, one seed) else paired bootstrap; Holm over all rows"
        )
    return "\n".join(lines)


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r):  # names left-aligned, numbers right-aligned
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def run(spec: AblationSpec, spec_path: str, **kw) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads from a model hub
    return Ablation(spec, spec_path, **kw).run()
