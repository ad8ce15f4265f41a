"""A run's report: PNG plots of its metrics and an ``index.html`` gathering them.

``write_report(run_dir)`` reads ``run_dir/metrics.jsonl`` (one JSON object per line with ``step``;
written by the training loop), and ``config.json``, ``summary.json`` and ``eval.json`` (the output of
``unigrad eval --out``) when present, and writes into ``run_dir/report/``:

- one PNG per metric family that has data, step on the x axis:
  ``objective.png`` (objective, surrogate, losses), ``reward.png`` (reward_mean, …),
  ``accuracy.png`` (keys containing "accuracy", pass@k), ``kl.png`` (KL to the reference),
  ``gate.png`` (sft_fraction and other gate decisions), ``reward_margin.png``, ``lr.png``,
  ``throughput.png`` (tokens/s) and ``other.png`` (every remaining metric, one small panel each);
- ``index.html``: run info (from config.json / summary.json), a table with each metric's first and
  last value, the figures, and eval results with a few example completions when eval.json exists.
"""
from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("unigrad.report")


@dataclass(frozen=True)
class Family:
    slug: str
    title: str
    ylabel: str
    match: Callable[[str], bool]


def _kl(key: str) -> bool:
    return re.search(r"(^|[/_])kl($|[/_0-9])", key.lower()) is not None


FAMILIES: tuple[Family, ...] = (
    Family("reward_margin", "Reward margin (chosen − rejected)", "margin", lambda k: "reward_margin" in k),
    Family("kl", "KL to the reference", "KL (nats)", _kl),
    Family("accuracy", "Accuracy", "accuracy", lambda k: "accuracy" in k or "pass@" in k),
    Family("gate", "Gate decisions", "fraction", lambda k: "sft_fraction" in k or re.search(r"(^|[/_])gate", k) is not None),
    Family("reward", "Reward", "reward", lambda k: "reward" in k and not k.startswith("reward/")),
    Family("objective", "Objective / loss", "value", lambda k: k.split("/")[-1] in ("objective", "surrogate") or "loss" in k),
    Family("lr", "Learning rate", "learning rate", lambda k: k.split("/")[-1] in ("lr", "learning_rate")),
    Family("throughput", "Throughput", "tokens / s", lambda k: "tokens_per_s" in k or "tok_s" in k),
)
DISPLAY_ORDER = ("objective", "reward", "accuracy", "kl", "gate", "reward_margin", "lr", "throughput", "other")
OTHER = Family("other", "Other metrics", "value", lambda k: True)
MAX_OTHER_PANELS = 16


# --------------------------------------------------------------------------------------- reading

def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (lines that are not JSON objects with a step are skipped with a warning)."""
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s, line %d: not JSON, skipped", path, i)
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
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


def group_metrics(keys) -> dict[Family, list[str]]:
    """Each metric in the first family that matches it (``OTHER`` last); families without a metric left out."""
    groups: dict[Family, list[str]] = {}
    for key in keys:
        family = next((f for f in FAMILIES if f.match(key)), OTHER)
        groups.setdefault(family, []).append(key)
    order = {slug: i for i, slug in enumerate(DISPLAY_ORDER)}
    return dict(sorted(groups.items(), key=lambda item: order[item[0].slug]))


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as e:
        log.warning("%s: unreadable (%s), left out of the report", path, e)
        return None


# -------------------------------------------------------------------------------------- plotting

def _plot_series(ax, key: str, points: list[tuple[float, float]]) -> None:
    xs, ys = zip(*points)
    evaluation = key.startswith("eval/")
    ax.plot(xs, ys, label=key, linestyle="--" if evaluation else "-", linewidth=1.6,
            marker="o" if evaluation or len(xs) <= 30 else None, markersize=4)


def _style(ax, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _plot_family(family: Family, keys: list[str], series, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if family is OTHER:   # one panel per metric, its train and eval/ series together
        panels: dict[str, list[str]] = {}
        for key in keys:
            panels.setdefault(key.removeprefix("eval/"), []).append(key)
        names = list(panels)[:MAX_OTHER_PANELS]
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            for key in panels[name]:
                _plot_series(ax, key, series[key])
            _style(ax, name, "value")
            if len(panels[name]) > 1:
                ax.legend(fontsize=8, loc="best")
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        fig.suptitle(family.title, fontsize=13)
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for key in keys:
            _plot_series(ax, key, series[key])
        _style(ax, family.title, family.ylabel)
        ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ HTML

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_info(run_dir: Path, config: Any, summary: Any, rows: list[dict]) -> list[list[Any]]:
    info: list[list[Any]] = [["run folder", str(run_dir)]]
    if isinstance(config, dict):
        model = config.get("model")
        info.append(["model", model.get("name", model) if isinstance(model, dict) else model])
        method = config.get("method")
        if isinstance(method, dict):
            shown = method.get("name") or ("parts" if "parts" in method else "sum" if "sum" in method else None)
            params = {k: v for k, v in method.items() if k != "name" and not isinstance(v, (dict, list))}
            info.append(["method", f"{shown} {json.dumps(params)}" if params else shown])
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


def _eval_section(result: dict) -> str:
    scalars = [[k, v] for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    parts = ["<h2>Evaluation (eval.json)</h2>", _table(["metric", "value"], scalars)]
    settings = result.get("settings")
    if isinstance(settings, dict):
        parts.append(f"<p class='small'>settings: {html.escape(json.dumps(settings))}</p>")
    records = result.get("records") or []
    if records:
        shown = [[r.get("prompt", ""), r.get("answer", ""), r.get("completion", ""), r.get("reward", "")]
                 for r in records[:20] if isinstance(r, dict)]
        parts.append(f"<h3>Greedy completions (first {len(shown)} of {len(records)})</h3>")
        parts.append(_table(["prompt", "answer", "completion", "reward"], shown))
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
"""


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the report of the run in ``run_dir`` (default into ``run_dir/report``); returns the path
    of its ``index.html``. Raises FileNotFoundError when ``run_dir`` has no metrics.jsonl."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl here (is it the output_dir of a training run?)")
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(metrics_path)
    series = metric_series(rows)
    config = _read_json(run_dir / "config.json")
    summary = _read_json(run_dir / "summary.json")
    evaluation = _read_json(run_dir / "eval.json")

    figures = []
    for family, keys in group_metrics(series).items():
        name = f"{family.slug}.png"
        _plot_family(family, keys, series, out / name)
        figures.append((family, keys, name))

    table = []
    for key, points in series.items():
        values = [v for _, v in points]
        table.append([key, len(points), f"{_fmt(points[0][1])} (step {_fmt(points[0][0])})",
                      f"{_fmt(points[-1][1])} (step {_fmt(points[-1][0])})", min(values), max(values)])
    title = f"unigrad report: {run_dir.resolve().name}"
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Run</h2>",
            _table(["", ""], _run_info(run_dir, config, summary, rows))]
    if table:
        body += ["<h2>Metrics</h2>", _table(["metric", "points", "first", "last", "min", "max"], table)]
    else:
        body.append("<p>metrics.jsonl has no numeric metrics yet.</p>")
    if figures:
        body.append("<h2>Plots</h2>")
        for family, keys, name in figures:
            body.append(f"<figure><img src='{name}' alt='{html.escape(family.title)}'>"
                        f"<figcaption>{html.escape(family.title)}: {html.escape(', '.join(keys))}</figcaption></figure>")
    if isinstance(evaluation, dict):
        body.append(_eval_section(evaluation))
    if isinstance(summary, dict):
        body += ["<h2>Summary (summary.json)</h2>", _table(["key", "value"], [[k, v] for k, v in summary.items()])]
    if config is not None:
        body += ["<h2>Config (config.json)</h2>",
                 f"<details><summary>show</summary><pre>{html.escape(json.dumps(config, indent=2))}</pre></details>"]
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


__all__ = ["FAMILIES", "Family", "group_metrics", "metric_series", "read_metrics", "write_report"]


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
