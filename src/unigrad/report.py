"""A run's report, and several runs overlaid: PNG plots of their metrics and an ``index.html``.

``write_report(run_dir)`` reads ``run_dir/metrics.jsonl`` (one JSON object per line with ``step``;
written by the training loop, which logs the held-out metrics as ``eval/...`` at step 0 and at the
end), and ``config.json``, ``summary.json`` and ``eval.json`` (the output of ``unigrad eval --out``)
when present, and writes ``run_dir/report/index.html`` in the order a user reads it:

1. **Outcome**: the held-out metric before → after (the first of eval/accuracy, eval/reward_mean,
   eval/objective, eval/reward_margin that the run has, then its other held-out scores) and
   ``outcome.png``; the results of eval.json when present.
2. **Training**: one PNG per metric family with data: ``reward.png``, ``accuracy.png``,
   ``reward_margin.png``, ``objective.png`` (objective, losses), ``kl.png`` (KL to the reference),
   ``entropy.png`` (the sampled policy's per-token entropy), ``entropy_cov.png`` (Cov(log π, Â) and its
   top tokens, Cui et al. 2025), ``throughput.png`` (tokens/s), ``gate.png`` (sft_fraction and other
   routing decisions).
3. **Internals**, collapsed: ``surrogate.png`` (a scalar whose gradient is the method's estimator; its
   value is meaningless by design), ``lr.png``, ``other.png`` (every remaining metric, one panel
   each) and the table of every metric's first, last, min and max.
4. The run's settings (config.json, summary.json).

Per-step metrics are noisy (a batch of a few prompts), so a series of ``MIN_SMOOTH`` points or more is
drawn raw (faint) under its centred moving average (solid; see ``smooth`` and ``smoothing_window``);
held-out (eval/) points are drawn as markers, unsmoothed.

``write_comparison(run_dirs, out_dir, labels)`` overlays several runs on one page (one colour per run,
the legend naming each by its label or folder): a table of each run's held-out metrics before → after,
then one figure per family with a panel per metric, the internals collapsed as above.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("unigrad.report")


@dataclass(frozen=True)
class Family:
    slug: str
    title: str
    ylabel: str
    match: Callable[[str], bool]
    internal: bool = False   # shown in the collapsed "Internals" section
    smooth: bool = True      # per-step values are noisy (the learning rate is not)


def _kl(key: str) -> bool:
    return re.search(r"(^|[/_])kl($|[/_0-9])", key.lower()) is not None


def _reward(key: str) -> bool:
    return "reward" in key and not key.startswith("reward/") and "fallback" not in key


FAMILIES: tuple[Family, ...] = (   # a metric belongs to the first family that matches it
    Family("reward_margin", "Reward margin (chosen − rejected)", "margin", lambda k: "reward_margin" in k),
    Family("kl", "KL to the reference", "KL (nats)", _kl),
    Family("entropy", "Policy entropy (per sampled token)", "entropy (nats)", lambda k: k.split("/")[-1] == "entropy"),
    Family("entropy_cov", "Covariance of log π and Â (entropy mechanism, Cui et al. 2025)", "covariance",
           lambda k: k.split("/")[-2:-1] == ["entropy"] and k.split("/")[-1].startswith("cov")),
    Family("accuracy", "Accuracy", "accuracy", lambda k: "accuracy" in k or "pass@" in k),
    Family("gate", "Gate routing", "fraction", lambda k: "sft_fraction" in k or re.search(r"(^|[/_])gate", k) is not None),
    Family("reward", "Reward", "reward", _reward),
    Family("surrogate", "Surrogate (its gradient is the estimator; its value means nothing)", "value",
           lambda k: k.split("/")[-1] == "surrogate", internal=True),
    Family("objective", "Objective / loss", "value", lambda k: k.split("/")[-1] == "objective" or "loss" in k),
    Family("lr", "Learning rate", "learning rate", lambda k: k.split("/")[-1] in ("lr", "learning_rate"),
           internal=True, smooth=False),
    Family("throughput", "Throughput", "tokens / s", lambda k: "tokens_per_s" in k or "tok_s" in k),
)
OTHER = Family("other", "Other metrics", "value", lambda k: True, internal=True)
DISPLAY_ORDER = ("reward", "accuracy", "reward_margin", "objective", "kl", "entropy", "entropy_cov", "throughput",
                 "gate", "surrogate", "lr", "other")
MAX_OTHER_PANELS = 16
MAX_PANELS = 9
# The headline held-out metric: the first of these a run logs.
OUTCOME_PRIORITY = ("eval/accuracy", "eval/reward_mean", "eval/objective", "eval/reward_margin")
OUTCOME_FAMILIES = ("accuracy", "reward", "objective", "reward_margin")
MIN_SMOOTH = 10
SURROGATE_NOTE = ("<b>surrogate</b> is the scalar whose gradient is the method's gradient estimator; its value is "
                  "meaningless by design (often a constant such as −1 or 0): read the objective instead.")


# --------------------------------------------------------------------------------------- reading

def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (lines that are not JSON objects with a step are skipped with a warning)."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s, line %d: not JSON, skipped", path, i)
            continue
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), (int, float)):
            log.warning("%s, line %d: no step, skipped", path, i)
            continue
        rows.append(row)
    return rows


def metric_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``{metric: [(step, value), ...]}`` for every numeric metric, in the order first seen; a step
    logged twice (a resumed run) keeps its last value."""
    series: dict[str, dict[float, float]] = {}
    for row in rows:
        step = row["step"]
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series.setdefault(key, {})[step] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def family_of(key: str) -> Family:
    return next((f for f in FAMILIES if f.match(key)), OTHER)


def group_metrics(keys) -> dict[Family, list[str]]:
    """Each metric in the first family that matches it (``OTHER`` last), families in ``DISPLAY_ORDER``;
    families without a metric left out."""
    groups: dict[Family, list[str]] = {}
    for key in keys:
        groups.setdefault(family_of(key), []).append(key)
    order = {slug: i for i, slug in enumerate(DISPLAY_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: order[item[0].slug]))


def outcome_keys(keys) -> list[str]:
    """The held-out metrics that say how a run went: those of ``OUTCOME_PRIORITY`` it has (the first is
    the headline), then its other eval/ accuracy, pass@k, reward, objective and reward-margin metrics."""
    keys = list(keys)
    chosen = [k for k in OUTCOME_PRIORITY if k in keys]
    chosen += [k for k in keys if k.startswith("eval/") and k not in chosen and family_of(k).slug in OUTCOME_FAMILIES]
    return chosen


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        log.warning("%s: unreadable (%s), left out of the report", path, e)
        return None


@dataclass
class Run:
    """What a report shows of one run folder."""
    folder: Path
    label: str
    rows: list[dict[str, Any]]
    series: dict[str, list[tuple[float, float]]]
    config: Any = None
    summary: Any = None
    evaluation: Any = None
    colour: str = "C0"
    outcome: list[str] = field(default_factory=list)


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Read a run folder; FileNotFoundError naming the folder when it or its metrics.jsonl is missing."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder (give a training run's output_dir, holding metrics.jsonl)")
    metrics_path = folder / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{folder}: no metrics.jsonl here (is it the output_dir of a training run?)")
    rows = read_metrics(metrics_path)
    series = metric_series(rows)
    return Run(folder, label or folder.resolve().name, rows, series, _read_json(folder / "config.json"),
               _read_json(folder / "summary.json"), _read_json(folder / "eval.json"), outcome=outcome_keys(series))


# ------------------------------------------------------------------------------------- smoothing

def smoothing_window(n: int) -> int:
    """The moving-average window for a series of ``n`` points: about a tenth of them, odd so that it is
    centred (2·⌊n/20⌋ + 1, at least 3), and 1 (no smoothing) below ``MIN_SMOOTH`` points."""
    return 1 if n < MIN_SMOOTH else max(3, 2 * (n // 20) + 1)


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average: point i is the mean of the finite values among i − w//2 … i + w//2, the
    window shrinking at the two ends (so the curve neither lags nor leaves the data's range); NaN where
    a window holds no finite value. ``window`` 1 returns the values unchanged."""
    if window < 1:
        raise ValueError(f"smoothing window must be ≥ 1, got {window}")
    half = window // 2
    out = []
    for i in range(len(values)):
        near = [v for v in values[max(0, i - half): i + half + 1] if math.isfinite(v)]
        out.append(sum(near) / len(near) if near else math.nan)
    return out


def _finite(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(s, v) for s, v in points if math.isfinite(v)]


# -------------------------------------------------------------------------------------- plotting

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _draw(ax, key: str, points, colour: str, label: str, smoothed: bool) -> int:
    """One series on ``ax``: held-out (eval/) points as markers on a dashed line; a per-step series of
    ``MIN_SMOOTH`` points or more raw (faint) under its moving average (solid). Returns the window used."""
    points = _finite(points)
    if not points:
        return 1
    xs, ys = zip(*points)
    if key.startswith("eval/"):
        ax.plot(xs, ys, color=colour, label=label, linestyle="--", linewidth=1.4, marker="o", markersize=5)
        return 1
    window = smoothing_window(len(ys)) if smoothed else 1
    if window > 1:
        ax.plot(xs, ys, color=colour, alpha=0.3, linewidth=0.9)
        ax.plot(xs, smooth(list(ys), window), color=colour, label=label, linewidth=1.8)
    else:
        ax.plot(xs, ys, color=colour, label=label, linewidth=1.6, marker="o" if len(xs) <= 30 else None, markersize=3)
    return window


def _style(ax, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _save(fig, plt, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_single(family: Family, keys: list[str], series, path: Path) -> set[int]:
    """One axes with each of the family's metrics in its own colour; returns the smoothing windows used."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    windows = {_draw(ax, key, series[key], f"C{i % 10}", key, family.smooth) for i, key in enumerate(keys)}
    _style(ax, family.title, family.ylabel)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    _save(fig, plt, path)
    return windows


def _plot_panels(title: str, ylabel: str, panels: dict[str, list[tuple[str, list, str, str]]], smoothed: bool,
                 path: Path, legend: list[tuple[str, str]] | None = None) -> set[int]:
    """One small panel per entry of ``panels`` (name → [(key, points, colour, label)]); with ``legend``
    ([(colour, label)], one per run) a legend for the whole figure, else one per panel of several lines.
    Returns the smoothing windows used."""
    plt = _pyplot()
    names = list(panels)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows + 0.4 + (0.3 if legend else 0)),
                             squeeze=False, layout="constrained")   # room for the title and the runs' legend
    windows = set()
    for ax, name in zip(axes.flat, names):
        for key, points, colour, label in panels[name]:
            windows.add(_draw(ax, key, points, colour, label, smoothed))
        _style(ax, name, ylabel)
        if legend is None and len(panels[name]) > 1:
            ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    if legend:
        from matplotlib.lines import Line2D
        handles = [Line2D([0], [0], color=colour, linewidth=2.5, label=label) for colour, label in legend]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=9, frameon=False)
    _save(fig, plt, path)
    return windows


def _by_name(keys: list[str], limit: int) -> dict[str, list[str]]:
    """Metrics grouped by name without the eval/ prefix (a panel shows a metric and its held-out value)."""
    panels: dict[str, list[str]] = {}
    for key in keys:
        panels.setdefault(key.removeprefix("eval/"), []).append(key)
    return dict(list(panels.items())[:limit])


def _caption(family_title: str, keys: list[str], windows: set[int]) -> str:
    text = f"{family_title}: {', '.join(keys)}."
    if any(key.startswith("eval/") for key in keys):
        text += " Markers on dashed lines: held-out (eval/)."
    used = sorted(w for w in windows if w > 1)
    if used:
        text += (f" Faint: the value at every logged step; solid: its centred moving average over "
                 f"{' or '.join(map(str, used))} logged points (fewer at the ends).")
    return text


def _figure(name: str, alt: str, caption: str) -> str:
    return (f"<figure><img src='{html.escape(name)}' alt='{html.escape(alt)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# ------------------------------------------------------------------------------------------ HTML

def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and math.isfinite(value) and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt_value(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _step(step: float) -> str:
    return fmt_value(int(step) if float(step).is_integer() else step)


def before_after(points: list[tuple[float, float]]) -> str:
    """``"0.13 → 0.36 (+0.23, step 0 → 200)"``: a held-out metric's first and last logged values."""
    (s0, v0), (s1, v1) = points[0], points[-1]
    if len(points) == 1:
        return f"{fmt_value(v0)} (step {_step(s0)}; no later evaluation)"
    change = v1 - v0
    sign = "+" if change >= 0 else ""
    return f"{fmt_value(v0)} → {fmt_value(v1)} ({sign}{fmt_value(change)}, step {_step(s0)} → {_step(s1)})"


def _lower_is_better(key: str) -> bool:
    return family_of(key).slug == "objective"


def _outcome_rows(run: Run) -> list[list[Any]]:
    rows = []
    for key in run.outcome:
        points = run.series[key]
        (s0, v0), (s1, v1) = points[0], points[-1]
        later = len(points) > 1
        change = v1 - v0
        rows.append([key, f"{fmt_value(v0)} (step {_step(s0)})", f"{fmt_value(v1)} (step {_step(s1)})" if later else "—",
                     f"{'+' if change >= 0 else ''}{fmt_value(change)}" if later else "—",
                     "lower" if _lower_is_better(key) else "higher"])
    return rows


def _run_info(run_dir: Path, config: Any, summary: Any, rows: list[dict]) -> list[list[Any]]:
    info: list[list[Any]] = [["run folder", str(run_dir)]]
    if isinstance(config, dict):
        model = config.get("model")
        info.append(["model", model.get("name", model) if isinstance(model, dict) else model])
        info.append(["method", _method(config)])
        data = config.get("data")
        if isinstance(data, dict):
            for key in ("train", "eval", "format"):
                if data.get(key) is not None:
                    info.append([f"data.{key}", data[key]])
        train = config.get("train")
        if isinstance(train, dict):
            for key in ("steps", "batch_size", "lr", "optimizer", "schedule", "seed"):
                if key in train:
                    info.append([f"train.{key}", train[key]])
    if rows:
        info.append(["steps logged", f"{rows[0]['step']} … {rows[-1]['step']} ({len(rows)} rows)"])
    if isinstance(summary, dict) and summary.get("final_model"):
        info.append(["final model", summary["final_model"]])
    return info


def _method(config: Any) -> Any:
    method = config.get("method") if isinstance(config, dict) else None
    if not isinstance(method, dict):
        return method
    shown = method.get("name") or ("parts" if "parts" in method else "sum" if "sum" in method else None)
    params = {k: v for k, v in method.items() if k != "name" and not isinstance(v, (dict, list))}
    return f"{shown} {json.dumps(params)}" if params else shown


def _eval_section(result: dict) -> str:
    scalars = [[k, v] for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    parts = ["<h3>Evaluation (eval.json)</h3>", html_table(["metric", "value"], scalars)]
    settings = result.get("settings")
    if isinstance(settings, dict):
        parts.append(f"<p class='small'>settings: {html.escape(json.dumps(settings))}</p>")
    records = result.get("records") or []
    if records:
        shown = [[r.get("prompt", ""), r.get("answer", ""), r.get("completion", ""), r.get("reward", "")]
                 for r in records[:20] if isinstance(r, dict)]
        parts.append(f"<h3>Greedy completions (first {len(shown)} of {len(records)})</h3>")
        parts.append(html_table(["prompt", "answer", "completion", "reward"], shown))
    return "\n".join(parts)


def _metrics_table(series) -> str:
    table = []
    for key, points in series.items():
        values = [v for _, v in points]
        table.append([key, len(points), f"{fmt_value(points[0][1])} (step {_step(points[0][0])})",
                      f"{fmt_value(points[-1][1])} (step {_step(points[-1][0])})", min(values), max(values)])
    return html_table(["metric", "points", "first", "last", "min", "max"], table)


def _internals(figures: list[str], series_tables: list[str], keys: list[str]) -> str:
    """The collapsed section: the surrogate's note, the internal metrics' plots and the full metrics table(s)."""
    names = list(dict.fromkeys(k.removeprefix("eval/") for k in keys))
    named = ", ".join(names[:3]) + (f" and {len(names) - 3} more metrics" if len(names) > 3 else "")
    parts = [f"<details id='internals'><summary><b>Internals</b>: {html.escape(named or 'no internal metrics')}; "
             "every metric's first and last value</summary>"]
    if "surrogate" in {k.split("/")[-1] for k in keys}:
        parts.append(f"<p>{SURROGATE_NOTE}</p>")
    parts += figures + ["<h3>All metrics</h3>", *series_tables, "</details>"]
    return "\n".join(parts)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { white-space: pre-wrap; max-width: 40em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.small { font-size: 0.85em; color: #555; }
.headline { font-size: 1.25em; margin: 0.4em 0 0.8em; }
details { margin: 1em 0 2em; padding: 0.4em 0.8em; border: 1px solid #ddd; border-radius: 4px; }
summary { cursor: pointer; }
"""


def _document(title: str, body: list[str]) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _headline(run: Run) -> str:
    if not run.outcome:
        missing = ("<p class='small'>No held-out metrics in metrics.jsonl (the training loop logs them as eval/... at "
                   "step 0 and at the end when the run has an eval split).</p>")
        scores = _evaluated(run)
        if not scores:
            return missing
        shown = " · ".join(f"<b>{html.escape(k)}</b> {fmt_value(float(v))}" for k, v in scores.items())
        return f"<p class='headline'>final model (eval.json): {shown}</p>" + missing
    key = run.outcome[0]
    better = " (lower is better)" if _lower_is_better(key) else ""
    return f"<p class='headline'>held-out <b>{html.escape(key)}</b>: {html.escape(before_after(run.series[key]))}{better}</p>"


def _subtitle(run: Run) -> str:
    bits = []
    if isinstance(run.config, dict):
        model = run.config.get("model")
        bits += [f"model {model.get('name', model) if isinstance(model, dict) else model}", f"method {_method(run.config)}"]
    if run.rows:
        bits.append(f"steps {_step(run.rows[0]['step'])} … {_step(run.rows[-1]['step'])}")
    return f"<p class='small'>{html.escape(' · '.join(bits))}</p>" if bits else ""


def _outcome_section(run: Run, out: Path) -> list[str]:
    """The headline held-out metric before → after, every held-out score in a table, and their plot."""
    parts = ["<h2>Outcome</h2>", _headline(run)]
    if not run.series:
        parts.append(f"<p>{html.escape(str(run.folder / 'metrics.jsonl'))} holds no metrics yet.</p>")
    if run.outcome:
        parts.append(html_table(["held-out metric", "before", "after", "change", "better"], _outcome_rows(run)))
        panels = {key: [(key, run.series[key], "C0", key)] for key in run.outcome[:MAX_PANELS]}
        _plot_panels("Held-out metrics", "value", panels, False, out / "outcome.png")
        parts.append(_figure("outcome.png", "Held-out metrics", "Held-out metrics (eval/), logged at step 0, at each "
                             "evaluation and at the end: " + ", ".join(panels) + "."))
    if isinstance(run.evaluation, dict):
        parts.append(_eval_section(run.evaluation))
    return parts


def _family_figures(series, out: Path) -> tuple[list[str], list[str], list[str]]:
    """Plot each family of one run; returns the figures to show, those of the internals, and the internal metrics."""
    shown, hidden, hidden_keys = [], [], []
    for family, keys in group_metrics(series).items():
        name = f"{family.slug}.png"
        if family is OTHER:
            panels = {n: [(k, series[k], f"C{i}", k) for i, k in enumerate(ks)]
                      for n, ks in _by_name(keys, MAX_OTHER_PANELS).items()}
            windows = _plot_panels(family.title, "value", panels, family.smooth, out / name)
        else:
            windows = _plot_single(family, keys, series, out / name)
        (hidden if family.internal else shown).append(_figure(name, family.title, _caption(family.title, keys, windows)))
        if family.internal:
            hidden_keys += keys
    return shown, hidden, hidden_keys


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of the run in ``run_dir`` (default into ``run_dir/report``); returns the path
    of its ``index.html``. Raises FileNotFoundError naming the folder when it or its metrics.jsonl is
    missing; a metrics.jsonl without metrics yet gives a page that says so."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = f"unigrad report: {run.label}"
    body = [f"<h1>{html.escape(title)}</h1>", _subtitle(run), *_outcome_section(run, out)]
    shown, hidden, hidden_keys = _family_figures(run.series, out)
    if shown:
        body += ["<h2>Training</h2>", *shown]
    if run.series:
        body.append(_internals(hidden, [_metrics_table(run.series)], hidden_keys))
    body += ["<h2>Run</h2>", html_table(["", ""], _run_info(run.folder, run.config, run.summary, run.rows))]
    if isinstance(run.summary, dict):
        body += ["<h2>Summary (summary.json)</h2>", html_table(["key", "value"], [[k, v] for k, v in run.summary.items()])]
    if run.config is not None:
        body += ["<h2>Config (config.json)</h2>",
                 f"<details><summary>show</summary><pre>{html.escape(json.dumps(run.config, indent=2))}</pre></details>"]
    index = out / "index.html"
    index.write_text(_document(title, body), encoding="utf-8")
    return index


# ------------------------------------------------------------------------------------ comparison

def _labels(folders: list[Path], labels: list[str] | None) -> list[str]:
    """The given labels, or each run's folder name (with its parent's where two names are the same)."""
    from unigrad.config import ConfigError
    if labels is not None:
        if len(labels) != len(folders):
            raise ConfigError(f"{len(labels)} labels for {len(folders)} runs: give one label per run folder")
        return [str(label) for label in labels]
    names = [f.resolve().name for f in folders]
    if len(set(names)) < len(names):
        names = [f"{f.resolve().parent.name}/{f.resolve().name}" for f in folders]
    if len(set(names)) < len(names):
        names = [f"{name} ({i + 1})" for i, name in enumerate(names)]
    return names


def _evaluated(run: Run) -> dict[str, float]:
    """The scores in a run's eval.json (``unigrad eval --out``, or a reproduction's evaluation of the final
    model): its numeric accuracy, pass@k, reward and objective entries."""
    if not isinstance(run.evaluation, dict):
        return {}
    return {k: v for k, v in run.evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and family_of(k).slug in OUTCOME_FAMILIES}


def _comparison_table(runs: list[Run]) -> str:
    """One row per run: its held-out metrics before → after (the union of the runs' eval/ outcome
    metrics), then the final model's scores from eval.json where the runs have one."""
    keys = outcome_keys(dict.fromkeys(k for run in runs for k in run.outcome))
    scores = list(dict.fromkeys(k for run in runs for k in _evaluated(run)))
    if not keys and not scores:
        return "<p>None of the runs logged held-out (eval/) metrics or has an eval.json.</p>"
    rows = []
    for run in runs:
        evaluated = _evaluated(run)
        cells = [f"<span style='color:{_hex(run.colour)}'>■</span> {html.escape(run.label)}", html.escape(str(run.folder))]
        cells += [html.escape(before_after(run.series[k])) if k in run.series else "—" for k in keys]
        cells += [fmt_value(float(evaluated[k])) if k in evaluated else "—" for k in scores]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    header = ["run", "folder", *keys, *(f"{k} (eval.json)" for k in scores)]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _hex(colour: str) -> str:
    from matplotlib.colors import to_hex
    return to_hex(colour)


def _overlay(runs: list[Run], keys: list[str], limit: int) -> dict[str, list[tuple[str, list, str, str]]]:
    """Panels of ``keys`` (a metric and its eval/ value together), each with every run that logged it."""
    panels = {}
    for name, group in _by_name(keys, limit).items():
        panels[name] = [(k, run.series[k], run.colour, run.label + (" (held-out)" if k.startswith("eval/") else ""))
                        for run in runs for k in group if k in run.series]
    return panels


def _comparison_outcome(runs: list[Run], out: Path, legend) -> list[str]:
    parts = ["<h2>Outcome</h2>", _comparison_table(runs)]
    empty = [run.label for run in runs if not run.series]
    if empty:
        parts.append(f"<p>No metrics yet in: {html.escape(', '.join(empty))}.</p>")
    outcome = outcome_keys(dict.fromkeys(k for run in runs for k in run.outcome))
    if outcome:
        panels = _overlay(runs, outcome, MAX_PANELS)
        _plot_panels("Held-out metrics", "value", panels, False, out / "outcome.png", legend)
        parts.append(_figure("outcome.png", "Held-out metrics", "Held-out metrics (eval/) of each run, one colour per "
                             "run: " + ", ".join(panels) + "."))
    return parts


def _overlay_figures(runs: list[Run], keys: list[str], out: Path, legend) -> tuple[list[str], list[str], list[str]]:
    """Plot each family across the runs; returns the figures to show, those of the internals, and the internal metrics."""
    shown, hidden, hidden_keys = [], [], []
    for family, members in group_metrics(keys).items():
        name = f"{family.slug}.png"
        panels = _overlay(runs, members, MAX_OTHER_PANELS if family is OTHER else MAX_PANELS)
        windows = _plot_panels(family.title, family.ylabel, panels, family.smooth, out / name, legend)
        caption = _caption(family.title, members, windows) + " One colour per run."
        (hidden if family.internal else shown).append(_figure(name, family.title, caption))
        if family.internal:
            hidden_keys += members
    return shown, hidden, hidden_keys


def write_comparison(run_dirs, out_dir: str | Path, labels: list[str] | None = None) -> Path:
    """One page overlaying several runs (one colour per run, named by ``labels`` or the run folders):
    a table of each run's held-out metrics before → after and their plot, then one figure per metric
    family with a panel per metric, the internals collapsed. Returns the path of ``out_dir/index.html``.
    Raises FileNotFoundError naming a run folder that (or whose metrics.jsonl) is missing, ConfigError
    when no run is given or the labels do not match the runs."""
    from unigrad.config import ConfigError
    folders = [Path(d) for d in run_dirs]
    if not folders:
        raise ConfigError("write_comparison: give at least one run folder")
    runs = [load_run(folder, label) for folder, label in zip(folders, _labels(folders, labels))]
    for i, run in enumerate(runs):
        run.colour = f"C{i % 10}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    legend = [(run.colour, run.label) for run in runs]
    title = "unigrad comparison: " + ", ".join(run.label for run in runs)
    body = [f"<h1>{html.escape(title)}</h1>", *_comparison_outcome(runs, out, legend)]
    keys = list(dict.fromkeys(k for run in runs for k in run.series))
    shown, hidden, hidden_keys = _overlay_figures(runs, keys, out, legend)
    if shown:
        body += ["<h2>Training</h2>", *shown]
    if keys:
        tables = [f"<h4>{html.escape(run.label)}</h4>" + (_metrics_table(run.series) if run.series else "<p>no metrics</p>")
                  for run in runs]
        body.append(_internals(hidden, tables, hidden_keys))
    info = [[run.label, str(run.folder), *(dict(_run_info(run.folder, run.config, run.summary, run.rows)).get(k, "")
                                          for k in ("model", "method", "steps logged"))] for run in runs]
    body += ["<h2>Runs</h2>", html_table(["run", "folder", "model", "method", "steps logged"], info)]
    index = out / "index.html"
    index.write_text(_document(title, body), encoding="utf-8")
    return index


__all__ = ["CSS", "FAMILIES", "Family", "MetricsLog", "OTHER", "Run", "before_after", "fmt_value", "group_metrics",
           "html_table", "load_run", "metric_series", "outcome_keys", "read_metrics", "smooth", "smoothing_window",
           "write_comparison", "write_report"]


# ------------------------------------------------------------------------------------------ metrics log

class MetricsLog:
    """A run's ``metrics.jsonl`` (one JSON object per logged step, truncated to the resumed step) and,
    when tensorboard is installed, the same scalars under ``tensorboard/``."""

    def __init__(self, folder: Path, start_step: int, tensorboard: bool):
        self.path = folder / "metrics.jsonl"
        kept = []
        if self.path.exists() and start_step > 0:   # a resumed run keeps what was logged up to its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start_step + 1)
            except Exception:  # tensorboard not installed: JSONL is enough
                self.writer = None

    def write(self, step: int, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **record}) + "\n")
        if self.writer:
            for key, value in record.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
