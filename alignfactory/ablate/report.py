"""The ablation section of the HTML report: `<ablation dir>/report.html`, from its ablation.json.

    write(path)              path: an ablation dir or its ablation.json -> <dir>/report.html
    section(result, items)   the section alone (HTML), for a page that has others

`alignfactory ablate` writes it at the end of every run; `alignfactory report <ablation dir>` writes it
again. One self-contained page like alignfactory.report's run report (its CSS and table helpers; no
script, no network), with:

  - per metric, a bar chart (inline SVG): each arm's mean, its 95% bootstrap interval as a whisker;
    each bar is <rect class="bar" data-arm data-mean data-lo data-hi>, each whisker <line class="ci">
  - the arms (data, rows, tokens, steps, worker-seconds, metrics) and the comparisons (paired diff
    b - a with its interval, p, Holm's p) as in the printed table
  - per comparison, up to DISAGREE eval items where the two arms disagree (one passes, one fails; or,
    for a graded metric, the largest differences): the question, each arm's output and its score,
    half of them where b did better and half where a did, when there are both

Scores and outputs are the first seed's (ablation.json's `items` and `outputs`); questions come from the
eval file the ablation read (`eval.path`), and only when its sha256 is still the one recorded.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from pathlib import Path

from alignfactory.report import CSS, _clip, _table_html

DISAGREE = 4  # items shown side by side per comparison
MAX_DISAGREEMENTS = 12  # comparisons with an items table (the first ones, in the spec's order)
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")
BOUNDED = ("accuracy", "pass_rate", "pass@", "judge_mean")  # metrics in [0, 1]: the axis is 0..1
W, H = 640, 260  # chart size (px)
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 22, 58  # margins: y labels, top value labels, arm names

ABLATION_CSS = """
figure.chart { margin: 0.8em 0; }
figure.chart svg { max-width: 100%; height: auto; font: 11px system-ui, sans-serif; }
figure.chart figcaption { color: #444; font-size: 12px; }
td.pass { background: #e6f4ea; } td.fail { background: #fce8e6; }
"""


def _bounded(metric: str) -> bool:
    return any(b in metric for b in BOUNDED)


def _num(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def bar_chart(metric: str, arms: list[dict]) -> str:
    """One metric: a bar per arm at its mean, a whisker from lo to hi; an arm with no score says so."""
    stats = [a["metrics"].get(metric) or {} for a in arms]
    values = [v for s in stats for v in (s.get("mean"), s.get("lo"), s.get("hi")) if v is not None]
    if _bounded(metric) and all(0 <= v <= 1 for v in values):
        lo_ax, hi_ax, step = 0.0, 1.0, 0.25
    else:  # e.g. reward_mean: any sign; the axis always shows 0, ticks at round numbers
        lo_ax, hi_ax = min([0.0, *values]), max([0.0, *values])
        if hi_ax == lo_ax:  # nothing scored, or every value 0
            hi_ax = 1.0
        raw = (hi_ax - lo_ax) / 4
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        lo_ax, hi_ax = math.floor(lo_ax / step) * step, math.ceil(hi_ax / step) * step
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def y(v: float) -> float:
        return TOP + plot_h * (hi_ax - v) / (hi_ax - lo_ax)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" data-metric="{html.escape(metric)}" '
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{html.escape(metric)} per arm, 95% intervals">'
    ]
    for i in range(round((hi_ax - lo_ax) / step) + 1):  # gridlines and y labels
        v = lo_ax + step * i
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" fill="#555">{v:.3g}</text>'
        )
    zero = y(0.0)
    slot = plot_w / max(1, len(arms))
    bar_w = min(64.0, slot * 0.6)
    for i, (arm, s) in enumerate(zip(arms, stats, strict=True)):
        cx = LEFT + slot * (i + 0.5)
        name = html.escape(arm["name"])
        out.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 34}" text-anchor="middle" fill="#222">{name}</text>')
        mean = s.get("mean")
        if mean is None:
            out.append(
                f'<text class="no-score" data-arm="{name}" x="{cx:.1f}" y="{zero - 6:.1f}" '
                f'text-anchor="middle" fill="#999">no score</text>'
            )
            continue
        lo, hi = s.get("lo", mean), s.get("hi", mean)
        top, bottom = min(y(mean), zero), max(y(mean), zero)
        tip = f"{arm['name']}: {mean:.3f} [{lo:.3f}, {hi:.3f}], n={s.get('n', '?')}"
        out.append(
            f'<rect class="bar" data-arm="{name}" data-mean="{mean}" data-lo="{lo}" data-hi="{hi}" '
            f'x="{cx - bar_w / 2:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
            f'height="{max(bottom - top, 1.0):.1f}" fill="{COLOURS[i % len(COLOURS)]}">'
            f"<title>{html.escape(tip)}</title></rect>"
        )
        cap = bar_w / 4
        out.append(
            f'<g class="ci" data-arm="{name}" stroke="#222" stroke-width="1.4">'
            f'<line class="ci" x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(hi):.1f}" y2="{y(lo):.1f}"/>'
            f'<line x1="{cx - cap:.1f}" x2="{cx + cap:.1f}" y1="{y(hi):.1f}" y2="{y(hi):.1f}"/>'
            f'<line x1="{cx - cap:.1f}" x2="{cx + cap:.1f}" y1="{y(lo):.1f}" y2="{y(lo):.1f}"/></g>'
            # the value beyond the whisker's far end: above a bar that rises, below one that falls
            f'<text x="{cx:.1f}" y="{y(hi) - 5 if mean >= 0 else y(lo) + 13:.1f}" text-anchor="middle" '
            f'fill="#222">{mean:.3f}</text>'
        )
    out.append(
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{zero:.1f}" y2="{zero:.1f}" stroke="#333"/>'
        f'<text x="{LEFT}" y="{TOP - 8}" fill="#222" font-weight="600">{html.escape(metric)}</text></svg>'
    )
    return "".join(out)


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def arms_table(result: dict):
    multi = len(result["arms"][0]["seeds"]) > 1
    rows = []
    for a in result["arms"]:
        d, t = a["data"] or {}, a["train"] or {}
        row = {
            "arm": a["name"],
            "data": d.get("recipe", "base model"),
            "rows": d.get("rows"),
            "correct": d.get("correct_rows"),
            "pairs": d.get("pairs"),
            "tokens": d.get("tokens"),
            "data worker-s": d.get("worker_s"),
            "training": t.get("recipe"),
            "steps": t.get("steps"),
            "train worker-s": t.get("worker_s"),
        }
        for m in result["eval"]["metrics"]:
            s = a["metrics"].get(m) or {}
            cell = f"{_num(s.get('mean'))} [{_num(s.get('lo'))}, {_num(s.get('hi'))}]"
            if multi and s.get("std") is not None:
                cell += f" ±{s['std']:.3f}"
            row[f"{m} [95% CI]"] = cell
        rows.append(row)
    return _frame(rows)


def comparisons_table(result: dict):
    return _frame(
        [
            {
                "b - a": f"{c['b']} - {c['a']}",
                "metric": c["metric"],
                "diff": _num(c.get("diff"), "+.3f"),
                "95% CI": f"[{_num(c.get('lo'), '+.3f')}, {_num(c.get('hi'), '+.3f')}]",
                "p": _num(c.get("p"), ".3g"),
                "p_holm": _num(c.get("p_holm"), ".3g"),
                "a_only": c.get("a_only", "-"),
                "b_only": c.get("b_only", "-"),
                "items": c.get("n"),
            }
            for c in result["comparisons"]
        ]
    )


def disagreements(result: dict, a: str, b: str, metric: str, k: int = DISAGREE) -> list[int]:
    """Indices of up to k eval items where arms a and b score differently on the metric: alternately
    one where b scored higher and one where a did (largest differences first, then item order)."""
    by = {arm["name"]: arm for arm in result["arms"]}
    xa, xb = by[a]["items"].get(metric) or [], by[b]["items"].get(metric) or []
    pairs = [(i, u, v) for i, (u, v) in enumerate(zip(xa, xb, strict=False)) if None not in (u, v)]
    b_won = sorted((i for i, u, v in pairs if v > u), key=lambda i: (xa[i] - xb[i], i))
    a_won = sorted((i for i, u, v in pairs if u > v), key=lambda i: (xb[i] - xa[i], i))
    out = []
    while len(out) < k and (b_won or a_won):
        for side in (b_won, a_won):
            if side and len(out) < k:
                out.append(side.pop(0))
    return out


def _question(item: dict | None, i: int) -> str:
    if item is None:
        return f"item {i}"
    q = item.get("question", item.get("prompt"))
    if isinstance(q, list):  # messages: the last user turn
        q = next((m.get("content") for m in reversed(q) if m.get("role") == "user"), "")
    head = f"[{item['id']}] " if item.get("id") is not None else ""
    tail = f"\n(answer: {item['answer']})" if item.get("answer") is not None else ""
    return head + str(q) + tail


def _score(metric: str, v) -> tuple[str, str]:
    """(cell text, css class) of one item score."""
    if v is None:
        return "not scored", ""
    if metric in ("math_accuracy", "constraint_pass_rate") or "_pass@" in metric:
        return ("pass", "pass") if v >= 1 else ("fail", "fail")
    return f"{v:.3g}", ""


def disagreement_table(result: dict, c: dict, items: list[dict] | None) -> str:
    """One comparison's disagreeing items side by side, as an HTML table (cells coloured pass/fail)."""
    idx = disagreements(result, c["a"], c["b"], c["metric"])
    if not idx:
        return f'<p class="note">{html.escape(c["a"])} and {html.escape(c["b"])} score every item alike.</p>'
    by = {arm["name"]: arm for arm in result["arms"]}
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ("question", f"{c['a']} output", c["metric"], f"{c['b']} output", c["metric"])
    )
    body = []
    for i in idx:
        cells = [f"<td>{html.escape(_clip(_question(items[i] if items else None, i)))}</td>"]
        for name in (c["a"], c["b"]):
            arm = by[name]
            text, cls = _score(c["metric"], arm["items"][c["metric"]][i])
            cells.append(f"<td>{html.escape(_clip(arm['outputs'][i]))}</td>")
            cells.append(f'<td class="{cls}">{text}</td>')
        body.append(f'<tr data-item="{i}">' + "".join(cells) + "</tr>")
    return (
        f'<table class="table disagree" data-a="{html.escape(c["a"])}" data-b="{html.escape(c["b"])}" '
        f'data-metric="{html.escape(c["metric"])}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def eval_items(result: dict) -> tuple[list[dict] | None, str | None]:
    """The eval file's items when it is still the one the ablation read, else (None, why not)."""
    ev = result["eval"]
    path = Path(ev["path"])
    if not path.is_file():
        return None, f"eval file {path} is gone: items are shown by index"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ev.get("sha256"):
        return None, f"eval file {path} changed since the ablation read it: items are shown by index"
    items = [json.loads(x) for x in data.decode("utf-8").splitlines() if x.strip()]
    return items[: ev["n_items"]], None


def section(result: dict, items: list[dict] | None = None, items_note: str | None = None) -> str:
    """The ablation section: charts, the arms and comparisons tables, disagreeing items."""
    ev, leak = result["eval"], result["leak_check"]
    parts = [f'<section id="ablation"><h2>Ablation: {html.escape(result["name"])}</h2>']
    parts.append(
        f"<p>{ev['n_items']} eval items ({html.escape(str(ev['path']))}), greedy; "
        f"leak check {'passed' if leak.get('ok') else 'FAILED'}: {html.escape(str(leak.get('compares', '')))}."
        "</p>"
    )
    parts.append('<section id="ablation-metrics"><h3>Metrics per arm, 95% bootstrap intervals</h3>')
    if not ev["metrics"]:
        parts.append('<p class="note">no metric: nothing scored the eval items</p>')
    for m in ev["metrics"]:
        n = max((a["metrics"].get(m, {}).get("n") or 0) for a in result["arms"])
        parts.append(
            f'<figure class="chart" data-metric="{html.escape(m)}">{bar_chart(m, result["arms"])}'
            f"<figcaption>{html.escape(m)}: mean over {n} scored items; whiskers: 95% bootstrap interval "
            "over items</figcaption></figure>"
        )
    parts.append("</section>")
    parts.append(
        '<section id="ablation-arms"><h3>Arms</h3>'
        + _table_html(arms_table(result))
        + '<p class="note">rows: SFT rows; correct: how many of them verify; tokens: training tokens '
        "(SFT rows + DPO pairs); worker-s: worker-seconds</p></section>"
    )
    comps = result["comparisons"]
    parts.append('<section id="ablation-comparisons"><h3>Comparisons (b - a, paired by item)</h3>')
    if comps:
        parts.append(_table_html(comparisons_table(result)))
        parts.append(
            '<p class="note">p: exact McNemar (pass/fail, one seed) else paired bootstrap; p_holm: '
            "Holm-corrected over all rows</p>"
        )
    else:
        parts.append('<p class="note">the spec compares no arms</p>')
    parts.append("</section>")
    parts.append('<section id="ablation-items"><h3>Items where compared arms disagree</h3>')
    if items_note:
        parts.append(f'<p class="note">{html.escape(items_note)}</p>')
    for c in comps[:MAX_DISAGREEMENTS]:
        title = f"{c['b']} vs {c['a']}: {c['metric']}"
        parts.append(f"<h4>{html.escape(title)}</h4>" + disagreement_table(result, c, items))
    if len(comps) > MAX_DISAGREEMENTS:
        parts.append(f'<p class="note">{len(comps) - MAX_DISAGREEMENTS} more comparisons not shown</p>')
    parts.append("</section></section>")
    return "\n".join(parts)


def build(result: dict) -> str:
    """The whole page as a string."""
    items, note = eval_items(result)
    title = f"{result['name']}: ablation report"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}{ABLATION_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p>spec {html.escape(str(result.get('spec_path', '')))}</p>\n"
        + section(result, items, note)
        + "\n</body></html>\n"
    )


def ablation_json(path) -> Path:
    """The ablation.json of an ablation dir (or the file itself); FileNotFoundError when there is none."""
    path = Path(path)
    f = path if path.name == "ablation.json" else path / "ablation.json"
    if not f.is_file():
        raise FileNotFoundError(
            f"{f}: no ablation.json (not an ablation dir, or the ablation has not finished)"
        )
    return f


def write(path) -> Path:
    """<ablation dir>/report.html from its ablation.json; returns the page's path."""
    from alignfactory import io

    f = ablation_json(path)
    target = f.parent / "report.html"
    io.write_atomic(target, build(json.loads(f.read_text("utf-8"))).encode("utf-8"))
    return target
