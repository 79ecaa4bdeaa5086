"""Views of a run directory (matplotlib figures, tables, one-line notes) and the HTML report.

    alignfactory report runs/sft_data      -> runs/sft_data/report.html, linked from its README.md

Each view is a function run_dir -> list of parts: a matplotlib Figure, a pandas DataFrame, or a str
saying in one line what the run lacks for it. The notebooks in notebooks/ call the same views
(`report.show(report.tag_frequency(run_dir))`), so the page and the notebooks never disagree. The page
is one self-contained file: figures are inline PNG (data: URIs), no script, no network.
"""

from __future__ import annotations

import base64
import html
import io as _io
import re
import warnings
from functools import lru_cache
from pathlib import Path

from alignfactory import cost, inspect, records
from alignfactory.inspect import REPORT_LINK as LINK
from alignfactory.storage import location

TOP_K = 20  # tags shown by name in frequency plots
MAP_ROWS = 2000  # instructions embedded for the 2-D map (a random sample beyond that)
SAMPLES = 5  # random rows shown side by side
CLIP = 600  # characters of a text shown in tables


def _figure(w: float = 7.0, h: float = 3.2, n: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(1, n)
    return fig, axes


def _clip(text, n: int = CLIP) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= n else text[:n] + f"... [{len(text)} chars]"


def _short(text, n: int) -> str:
    """A plot label: at most n characters."""
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


# ---- views ---------------------------------------------------------------------------------------


def stages_table(run_dir) -> list:
    """Rows in/out/rejected, tokens, seconds and money per stage, and per accepted row / pair."""
    c = cost.summary(inspect.manifest(run_dir), run_dir)
    import pandas as pd

    df = pd.DataFrame(c["stages"]).drop(columns=["model"])
    per = pd.DataFrame([{"per": unit.replace("_", " ")[:-1]} | v for unit, v in c["per"].items()])
    return [df, per]


def rejections(run_dir) -> list:
    """Rejection reasons (their kind) by stage, and one example of each."""
    rej = inspect.rejected(run_dir)
    if not len(rej):
        return ["no rows were rejected"]
    counts = rej.groupby(["stage", "kind"]).size().unstack(fill_value=0)
    fig, ax = _figure(7, 0.5 + 0.45 * len(counts))
    left = None
    for kind in counts.columns:
        ax.barh(counts.index, counts[kind], left=left, label=kind)
        left = counts[kind] if left is None else left + counts[kind]
    ax.set_xlabel("rows rejected")
    ax.legend(fontsize=7, loc="lower right")
    examples = (
        rej.groupby(["stage", "kind"]).first().reset_index()[["stage", "kind", "reason", "instruction"]]
    )
    examples["rows"] = [
        int(counts.loc[s, k]) for s, k in zip(examples["stage"], examples["kind"], strict=True)
    ]
    examples["instruction"] = examples["instruction"].map(lambda t: _clip(t, 160))
    return [fig, examples]


def tag_frequency(run_dir) -> list:
    """Top-k tags and the long tail (rank-frequency, log-log); canonical tags if the run has them."""
    t = inspect.tags(run_dir)
    if not len(t):
        return ["no tags: the run has no instag / tag_normalize stage"]
    kind = "canonical" if (t["kind"] == "canonical").any() else "raw"
    freq = t[t["kind"] == kind].groupby("tag")["source"].nunique().sort_values(ascending=False)
    fig, (a, b) = _figure(9, 3.6, 2)
    top = freq.head(TOP_K)[::-1]
    a.barh([_short(x, 28) for x in top.index], top.values)
    a.set_title(f"top {len(top)} {kind} tags (instructions)")
    a.tick_params(axis="y", labelsize=7)
    b.loglog(range(1, len(freq) + 1), freq.values, marker=".")
    b.set_title(f"long tail: {len(freq)} tags, {int((freq == 1).sum())} used once")
    b.set_xlabel("rank")
    b.set_ylabel("instructions")
    return [fig]


def tag_cooccurrence(run_dir) -> list:
    """How often the most frequent tags appear on the same row (top 15, rows)."""
    t = inspect.tags(run_dir)
    if not len(t):
        return ["no tags: no co-occurrence to show"]
    kind = "canonical" if (t["kind"] == "canonical").any() else "raw"
    t = t[t["kind"] == kind]
    top = t.groupby("tag")["source"].nunique().sort_values(ascending=False).head(15).index
    onehot = t[t["tag"].isin(top)].assign(v=1)
    onehot = onehot.pivot_table(index="source", columns="tag", values="v", fill_value=0)  # instruction x tag
    onehot = onehot[list(top)]
    co = onehot.T.dot(onehot)
    fig, ax = _figure(6, 5)
    im = ax.imshow(co.values, cmap="viridis")
    labels = [_short(x, 20) for x in co.index]
    ax.set_xticks(range(len(co)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(co)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="instructions with both")
    return [fig]


def lengths(run_dir) -> list:
    """Instruction and response lengths (characters) of the rows that reached the end."""
    f = inspect.final(run_dir)
    if not len(f):
        return ["no rows reached the end of the pipeline"]
    fig, (a, b) = _figure(9, 3, 2)
    a.hist(f["instruction_chars"], bins=30)
    a.set_title(f"instruction length (chars), median {f['instruction_chars'].median():.0f}")
    resp = f["response_chars"].dropna()
    if len(resp):
        b.hist(resp, bins=30, color="tab:orange")
        b.set_title(f"response length (chars), median {resp.median():.0f}")
    else:
        b.text(0.5, 0.5, "no responses", ha="center")
    return [fig]


def evolution(run_dir) -> list:
    """Evolution: depth (rounds) of the final rows, operations applied, why evolved rows were dropped."""
    edges = inspect.lineage(run_dir)
    evo = edges[edges["operation"].notna()]
    if not len(evo):
        return ["no evolution: no row carries lineage.operation (no evolve stage)"]
    d = inspect.depth(run_dir)
    fig, (a, b, c) = _figure(11, 3.2, 3)
    rounds = d["round"].value_counts().sort_index()
    a.bar([str(x) for x in rounds.index], rounds.values)
    a.set_title("final rows by evolution round")
    ops = evo.groupby(["operation", evo["rejected"].isna()]).size().unstack(fill_value=0)
    ops = ops.reindex(columns=[True, False], fill_value=0)
    a2 = ops.index.astype(str)
    b.barh(a2, ops[True], label="kept")
    b.barh(a2, ops[False], left=ops[True], label="eliminated")
    b.set_title("operations")
    b.legend(fontsize=7)
    reasons = evo["rejected"].dropna().map(inspect.reason_kind).value_counts()
    if len(reasons):
        c.barh(reasons.index, reasons.values, color="tab:red")
    else:
        c.text(0.5, 0.5, "nothing eliminated", ha="center")
    c.set_title("elimination reasons")
    return [fig]


def verifiers(run_dir) -> list:
    """Sandbox statuses of every candidate run, and pass rates per stage and kind."""
    v = inspect.verdicts(run_dir)
    if not len(v):
        return ["no sandbox verdicts: no exec_feedback / autoif stage"]
    counts = v.groupby([v["stage"] + " / " + v["what"], "status"]).size().unstack(fill_value=0)
    fig, ax = _figure(8, 0.6 + 0.5 * len(counts))
    left = None
    for status in counts.columns:
        ax.barh(counts.index, counts[status], left=left, label=status)
        left = counts[status] if left is None else left + counts[status]
    ax.set_xlabel("candidates")
    ax.legend(fontsize=7, ncol=4)
    rates = v.groupby(["stage", "what"])["passed"].agg(["mean", "size"]).reset_index()
    rates.columns = ["stage", "what", "pass rate", "candidates"]
    return [fig, rates.round(3)]


def score_histograms(run_dir) -> list:
    """Judge, reward and verifier scores, kept vs rejected rows."""
    s = inspect.scores(run_dir)
    cols = [c for c in ("judge", "reward", "verifier") if s[c].notna().any()] if len(s) else []
    if not cols:
        return ["no judge, reward or verifier scores in this run"]
    fig, axes = _figure(3.4 * len(cols), 3, len(cols))
    for ax, c in zip([axes] if len(cols) == 1 else axes, cols, strict=True):
        kept, dropped = s[s["rejected"].isna()][c].dropna(), s[s["rejected"].notna()][c].dropna()
        ax.hist([kept, dropped], bins=15, stacked=True, label=["kept", "rejected"])
        ax.set_title(f"{c} score (n={len(kept) + len(dropped)})")
        ax.legend(fontsize=7)
    return [fig]


def judge_consistency(run_dir) -> list:
    """Pairwise judge consistency per judge stage: comparisons judged both ways, agreeing under the
    position swap, flipped (counted as ties), unreadable (dropped); from the manifest, else the shards."""
    c = inspect.manifest(run_dir).get("judge_consistency")
    c = inspect.judge_consistency(run_dir) if c is None else c
    if not c:
        return ["no judge stage in this run"]
    import pandas as pd

    df = pd.DataFrame([{"stage": k} | v for k, v in c.items()])
    rates = zip(df["agree"], df["judged"], strict=True)
    df["agree rate"] = [f"{a / j:.1%}" if j else "not judged pairwise" for a, j in rates]
    return [df]


def contamination(run_dir) -> list:
    """What each decontaminate stage checked: benchmark files (sha256, items), rows checked, rejected."""
    from alignfactory.stages.curate.decontaminate import checks

    found = checks(run_dir)
    if not found:
        return ["no decontaminate stage: no row was compared with any benchmark"]
    import pandas as pd

    rows = []
    for c in found:
        k = c["check"] or {}
        for f in k.get("files") or [{}]:
            rows.append(
                {
                    "stage": c["stage"],
                    "on": k.get("on", "not run"),
                    "rows checked": k.get("rows_checked", 0),
                    "contaminated": k.get("rows_contaminated", 0),
                    "ngram": k.get("ngram"),
                    "benchmark": f.get("name", "none listed"),
                    "items": f.get("items"),
                    "sha256": f.get("sha256"),
                }
            )
    return [pd.DataFrame(rows)]


def preference(run_dir) -> list:
    """Preference pairs: score margin (chosen - rejected) and chosen/rejected length ratio."""
    p = inspect.pairs(run_dir)
    if not len(p):
        return ["no preference pairs in this run"]
    import numpy as np

    fig, (a, b) = _figure(9, 3, 2)
    margin = p["margin"].dropna()
    if len(margin):
        a.hist(margin, bins=20)
        a.set_title(f"score margin, median {margin.median():.2f}")
    else:
        a.text(0.5, 0.5, "pairs carry no scores", ha="center")
    ratio = np.log2(p["length_ratio"].clip(lower=1e-3))
    b.hist(ratio, bins=20, color="tab:green")
    b.axvline(0, color="k", lw=0.8)
    longer = float((p["length_ratio"] > 1).mean())
    b.set_title(f"log2(chosen/rejected length): chosen longer in {longer:.0%}")
    return [fig, p[["stage", "chosen_chars", "rejected_chars", "length_ratio", "margin"]].describe().round(2)]


def duplicate_clusters(run_dir) -> list:
    """Duplicate clusters (largest first) with their members' instructions."""
    d = inspect.duplicates(run_dir)
    if not len(d):
        return ["no duplicates were found (or no dedup stage)"]
    size = d.groupby("cluster")["id"].transform("size")
    d = d.assign(size=size).sort_values(["size", "cluster", "kept"], ascending=[False, True, False])
    d["instruction"] = d["instruction"].map(lambda t: _clip(t, 200))
    sizes = d.groupby("cluster").size().value_counts().sort_index()
    fig, ax = _figure(5, 2.6)
    ax.bar([str(x) for x in sizes.index], sizes.values)
    ax.set_xlabel("rows in the cluster (kept + dropped)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{len(sizes) and int(sizes.sum())} clusters, {int((~d['kept']).sum())} rows dropped")
    return [fig, d.head(40)]


def embedding_map(run_dir) -> list:
    """One point per input line (its instruction as last seen: evolved, kept or rejected), embedded
    with all-MiniLM-L6-v2 and projected to 2-D (PCA), coloured by its first tag (or, without tags, by
    whether it was kept)."""
    import numpy as np

    points = {}  # source "file:line" -> (instruction, rejected)
    for r in inspect.leaves(run_dir):
        text = records.instruction(r)
        if text and inspect.source_key(r) not in points:
            points[inspect.source_key(r)] = (text, bool(r.get("reject")))
    if len(points) < 3:
        return ["fewer than 3 instructions: no map"]
    keys = list(points)
    if len(keys) > MAP_ROWS:
        keys = [keys[i] for i in sorted(np.random.default_rng(0).choice(len(keys), MAP_ROWS, replace=False))]
    from alignfactory.llm.embed import Embedder

    vecs = Embedder().encode([points[k][0] for k in keys])  # (n, 384), L2-normalized
    centered = vecs - vecs.mean(axis=0)
    xy = centered @ np.linalg.svd(centered, full_matrices=False)[2][:2].T  # (n, 2)
    t = inspect.tags(run_dir)
    if len(t):
        kind = "canonical" if (t["kind"] == "canonical").any() else "raw"
        t = t[t["kind"] == kind]
        first = t.groupby("source")["tag"].first()
        top = set(t.groupby("tag")["source"].nunique().sort_values(ascending=False).head(9).index)
        label = [first.get(k) if first.get(k) in top else "other" for k in keys]
        what = f"first {kind} tag (top 9)"
    else:
        label = ["rejected" if points[k][1] else "kept" for k in keys]
        what = "outcome (the run has no tags)"
    fig, ax = _figure(6.5, 5)
    for name in sorted(set(label), key=str):
        m = np.array([x == name for x in label])
        ax.scatter(xy[m, 0], xy[m, 1], s=14, label=_short(name, 24), alpha=0.8)
    ax.legend(fontsize=7, markerscale=1.5)
    ax.set_title(f"{len(keys)} instructions, PCA of embeddings, coloured by {what}", fontsize=9)
    return [fig]


def samples(run_dir) -> list:
    """Random rows side by side: instruction and response; prompt, chosen and rejected for pairs."""
    out = []
    f = inspect.final(run_dir)
    if len(f):
        s = f.sample(min(SAMPLES, len(f)), random_state=0)
        out.append(s[["instruction", "response"]].map(_clip).reset_index(drop=True))
    p = inspect.pairs(run_dir)
    if len(p):
        s = p.sample(min(SAMPLES, len(p)), random_state=0)
        out.append(s[["prompt", "chosen", "rejected"]].map(_clip).reset_index(drop=True))
    return out or ["no rows reached the end of the pipeline"]


# (anchor, title, view, needs): the view draws a plot unless inspect.missing() has the key `needs`
VIEWS = [
    ("stages", "Stages: rows, tokens, seconds, cost", stages_table, None),
    ("rejections", "Rejection reasons by stage", rejections, "rejected"),
    ("tags", "Tag frequency", tag_frequency, "tags"),
    ("cooccurrence", "Tag co-occurrence", tag_cooccurrence, "tags"),
    ("lengths", "Instruction and response lengths", lengths, "final"),
    ("evolution", "Evolution lineage", evolution, "evolution"),
    ("verifiers", "Verifier pass rates and sandbox statuses", verifiers, "verdicts"),
    ("scores", "Judge, reward and verifier scores", score_histograms, "scores"),
    ("consistency", "Judge consistency under position swap", judge_consistency, None),
    ("preference", "Preference margins and length ratio", preference, "pairs"),
    ("duplicates", "Near-duplicate clusters", duplicate_clusters, "duplicates"),
    ("contamination", "Contamination: benchmarks checked", contamination, None),
    ("map", "Instruction embeddings (2-D)", embedding_map, "final"),
    ("samples", "Random samples", samples, None),  # tables only
]


# ---- rendering -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _fonts() -> tuple[str, ...]:
    """DejaVu Sans, then any CJK system font (fonts-wqy-microhei, Noto CJK) as fallback for Chinese
    tags and text; matplotlib's font cache predates fonts installed later, so they are added here."""
    from matplotlib import font_manager as fm

    names = []
    for path in fm.findSystemFonts():
        if re.search(r"wqy|cjk|droidsansfallback", Path(path).name, re.I):
            try:
                fm.fontManager.addfont(path)
                names.append(fm.FontProperties(fname=path).get_name())
            except (OSError, RuntimeError, ValueError):
                continue
    return ("DejaVu Sans", *dict.fromkeys(names))


def png(fig) -> bytes:
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # fonts are fixed when a text is made: give each the fallbacks
        text.set_fontfamily(list(_fonts()))
    buf = _io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # CJK text without a CJK font
        fig.savefig(buf, format="png", dpi=96)
    return buf.getvalue()


def show(parts: list) -> None:
    """Display a view's parts in a notebook (figures as PNG, frames as tables, notes as text)."""
    from IPython.display import Image, Markdown, display

    for part in parts:
        if isinstance(part, str):
            display(Markdown(f"*{html.escape(part)}*"))
        elif hasattr(part, "savefig"):
            display(Image(png(part)))
        else:
            display(part)


def _part_html(anchor: str, part) -> str:
    if isinstance(part, str):
        return f'<p class="note">{html.escape(part)}</p>'
    if hasattr(part, "savefig"):
        data = base64.b64encode(png(part)).decode("ascii")
        return f'<img class="plot" data-view="{anchor}" alt="{anchor}" src="data:image/png;base64,{data}">'
    return _table_html(part)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):  # None / NaN
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))  # newlines kept: cells are white-space: pre-wrap


def _table_html(df) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False)
    )
    return f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
img.plot { max-width: 100%; display: block; margin: 0.5em 0; }
table.table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
table.table td, table.table th { border: 1px solid #ddd; padding: 3px 6px; vertical-align: top;
  white-space: pre-wrap; max-width: 480px; }
p.note { color: #666; font-style: italic; }
nav a { margin-right: 0.8em; }
"""


def build(run_dir) -> str:
    """The whole page as a string."""
    run_dir = location(run_dir)
    m = inspect.manifest(run_dir)
    body = []
    for anchor, title, view, _ in VIEWS:
        try:
            parts = view(run_dir)
        except Exception as e:  # one broken view must not hide the others; the page says what failed
            parts = [f"this view failed: {type(e).__name__}: {e}"]
        inner = "\n".join(_part_html(anchor, p) for p in parts)
        body.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{inner}\n</section>')
    nav = " ".join(f'<a href="#{a}">{html.escape(t.split(":")[0])}</a>' for a, t, _, _ in VIEWS)
    title = f"{m['name']}: run report"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>{html.escape(str(run_dir))} &middot; alignfactory {html.escape(m.get('code_version', ''))} "
        f"&middot; {m.get('seconds', 0):.0f} s</p>\n<nav>{nav}</nav>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write(run_dir) -> Path:
    """run_dir/report.html, and a link to it in run_dir/README.md (added once)."""
    from alignfactory import io

    run_dir = location(run_dir)
    target = run_dir / "report.html"
    io.write_atomic(target, build(run_dir).encode("utf-8"))
    readme = run_dir / "README.md"
    text = readme.read_text("utf-8") if readme.exists() else ""
    if LINK not in text:  # (a re-run's dataset card keeps it: inspect.dataset_card adds it too)
        io.write_atomic(readme, (text.rstrip("\n") + "\n\n" + LINK + "\n").lstrip("\n").encode("utf-8"))
    return target


def main(argv: list[str] | None = None) -> int:
    """`alignfactory report RUN_DIR` (the CLI's subcommand calls this)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="alignfactory report", description="write RUN_DIR/report.html")
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    try:
        path = write(args.run_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
