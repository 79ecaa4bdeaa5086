"""reward: score (prompt, response) with a sequence-classification reward model from a local HF dir.

The model (num_labels=1, e.g. what `trl reward` trains) is loaded once per actor: the stage declares
uses_llm, so the runner places it in an ActorPool like an engine stage, on a GPU when the spec's
resources give it one (device="auto" takes CUDA when torch sees it). Rows are scored in batches of
params.batch_size; each conversation (prompt + response) is rendered with the tokenizer's chat
template (plain "role: content" lines when it has none), truncated from the left to max_length
tokens so the response, which decides the score, is kept.

    row out: meta.reward = {score: float (the logit), model: path}
    rejects: no_response | below_min_score: s < min_score (the gate, when min_score is set)
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator

from alignfactory import records
from alignfactory.stages.base import Stage


class Reward(Stage):
    uses_llm: ClassVar[bool] = True  # heavy model per actor: ActorPool placement, GPU if given

    class Params(BaseModel, extra="forbid"):
        model_path: str  # local HF directory of an AutoModelForSequenceClassification, num_labels=1
        batch_size: int = Field(8, ge=1)  # rows per forward pass
        max_length: int = Field(1024, ge=8)  # tokens per (prompt, response), truncated from the left
        device: Literal["auto", "cpu", "cuda"] = "auto"
        min_score: float | None = None  # gate: rows scoring below it are rejected

        @field_validator("model_path")
        @classmethod
        def _local_dir(cls, v: str) -> str:
            if not (Path(v) / "config.json").is_file():
                raise ValueError(f"{v}: not a local HF model directory (no config.json)")
            return v

    requires = {"messages": "a conversation ending in an assistant turn"}
    adds = ("meta.reward",)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        want_cuda = params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if want_cuda else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(params.model_path)
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(params.model_path).to(self.device).eval()
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{params.model_path}: a reward model has num_labels=1, not {self.model.config.num_labels}"
            )
        if self.model.config.pad_token_id is None:  # it finds the last real token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def text(self, row: dict) -> str:
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)

    def scores(self, texts: list[str]) -> list[float]:
        import torch

        out = []
        for i in range(0, len(texts), self.params.batch_size):
            chunk = texts[i : i + self.params.batch_size]
            enc = self.tokenizer(
                chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.params.max_length
            ).to(self.device)
            self.tokens_in += int(enc["attention_mask"].sum())
            with torch.inference_mode():
                logits = self.model(**enc).logits  # (batch, 1)
            out += [float(x) for x in logits[:, 0].float().cpu()]
        return out

    def __call__(self, rows: list[dict]) -> list[dict]:
        todo = [r for r in rows if records.response(r) is not None]
        for r in rows:
            if records.response(r) is None:
                self.reject(r, "no_response: reward scores a response")
        for r, s in zip(todo, self.scores([self.text(r) for r in todo]), strict=True):
            self.meta(r).update(score=round(s, 6), model=self.params.model_path)
            if self.params.min_score is not None and s < self.params.min_score:
                self.reject(r, f"below_min_score: {s:.4f} < {self.params.min_score}")
        return rows
