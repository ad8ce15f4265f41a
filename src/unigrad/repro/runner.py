"""Running reproductions and writing what they found: ``runs/repro/NAME/result.json`` and
``index.html`` per reproduction, ``runs/repro/index.html`` over all of them, and the results page
``docs/REPRODUCTIONS.md`` from the last full-scale runs."""
from __future__ import annotations

import html
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unigrad.repro import get, names
from unigrad.repro.base import Reproduction, Scale
from unigrad.report import CSS, fmt_value, html_table

RESULT = "result.json"
PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors")


def versions() -> dict[str, str]:
    """Python, unigrad and its main dependencies, and the git commit when run from a checkout."""
    from importlib import metadata
    found = {"python": platform.python_version()}
    for package in ("unigrad", *PACKAGES):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            found["commit"] = commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def command(name: str, scale: Scale) -> str:
    flags = [" --tiny" if scale.tiny else "", " --quick" if scale.quick else "",
             f" --seeds {scale.seeds}" if scale.seeds is not None else ""]
    return f"unigrad repro {name}" + "".join(flags)


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def run_one(repro: Reproduction, out_root: str | Path, scale: Scale) -> dict[str, Any]:
    """Run ``repro`` at ``scale`` into ``out_root/NAME``; returns the result written to result.json."""
    folder = Path(out_root) / repro.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    outcome = repro.run(folder, scale)
    result = {
        "name": repro.name, "title": repro.title, "scale": scale.name, "seeds": scale.seeds,
        "claim": vars(repro.claim), "setting": repro.setting, "measure": repro.measure,
        "verdict_rule": repro.verdict_rule, "verdict": outcome.verdict, "reason": outcome.reason,
        "ours": outcome.ours, "numbers": outcome.numbers, "table": outcome.table, "figures": outcome.figures,
        "notes": outcome.notes, "links": outcome.links, "command": command(repro.name, scale), "started": when,
        "wall_seconds": round(time.perf_counter() - started, 1), "versions": versions(),
    }
    _atomic_write(folder / RESULT, json.dumps(result, indent=1, default=str))
    _atomic_write(folder / "index.html", page(result))
    return result


def last_result(out_root: str | Path, name: str) -> dict[str, Any] | None:
    path = Path(out_root) / name / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------ pages

def _rows_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    header = list(dict.fromkeys(key for row in rows for key in row))
    return html_table(header, [[row.get(key, "") for key in header] for row in rows])


def _verdict_badge(verdict: str) -> str:
    colour = {"reproduced": "#1a7f37", "partly reproduced": "#9a6700"}.get(verdict, "#cf222e")
    return f"<span style='color:{colour};font-weight:600'>{html.escape(verdict)}</span>"


def _document(title: str, body: list[str]) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def page(result: dict[str, Any]) -> str:
    """One reproduction's page: the claim and the paper's number beside ours, the verdict and its
    rule, the figures, the table, the setting and how it was run."""
    claim = result["claim"]
    esc = html.escape
    body = [f"<h1>{esc(result['title'])}</h1>",
            f"<p class='small'>{esc(claim['paper'])} — {esc(claim['where'])}</p>",
            f"<p><b>The claim.</b> {esc(claim['statement'])}</p>",
            html_table(["the paper", f"ours ({result['scale']})"], [[claim["paper_number"], result["ours"]]]),
            f"<p><b>Verdict:</b> {_verdict_badge(result['verdict'])}. {esc(result['reason'])}</p>",
            f"<p class='small'><b>Rule, fixed before the run:</b> {esc(result['verdict_rule'])}</p>"]
    body += [f"<figure><img src='{esc(name)}' alt='{esc(name)}'></figure>" for name in result["figures"]]
    if result["table"]:
        body += ["<h2>Measured</h2>", _rows_table(result["table"])]
    if result.get("notes"):
        body.append(f"<p>{esc(result['notes'])}</p>")
    body += [f"<p><a href='{esc(path)}'>{esc(title)}</a></p>" for title, path in result.get("links", {}).items()]
    body += ["<h2>Setting</h2>", f"<p>{esc(result['setting'])}</p>", f"<p><b>Measure.</b> {esc(result['measure'])}</p>",
             html_table(["", ""], [["command", result["command"]], ["started", result["started"]],
                                   ["wall time", f"{result['wall_seconds']:.0f} s"],
                                   *[[k, v] for k, v in result["versions"].items()]]),
             f"<details><summary>all numbers</summary><pre>{esc(json.dumps(result['numbers'], indent=1, default=str))}</pre></details>"]
    return _document(result["title"], body)


def write_index(out_root: str | Path) -> Path:
    """``out_root/index.html``: every reproduction with its last verdict, linking to its page."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names():
        result = last_result(out_root, name)
        if result is None:
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(get(name).claim.statement)}</td>"
                        "<td>not run</td><td></td><td></td></tr>")
            continue
        rows.append(f"<tr><td><a href='{html.escape(name)}/index.html'>{html.escape(name)}</a></td>"
                    f"<td>{html.escape(result['claim']['paper_number'])}</td><td>{html.escape(result['ours'])}</td>"
                    f"<td>{_verdict_badge(result['verdict'])}</td><td>{html.escape(result['scale'])}</td></tr>")
    table = ("<table><thead><tr><th>reproduction</th><th>the paper</th><th>ours</th><th>verdict</th><th>scale</th>"
             "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    index = out_root / "index.html"
    _atomic_write(index, _document("unigrad reproductions", ["<h1>unigrad reproductions</h1>", table]))
    return index


def listing(out_root: str | Path) -> str:
    """``unigrad repro --list``: each reproduction, its claim and its last verdict."""
    lines = []
    for name in names():
        repro = get(name)
        result = last_result(out_root, name)
        last = (f"{result['verdict']} ({result['scale']}, {result['started'][:10]})" if result else "not run yet")
        lines += [f"{name}: {repro.title}", f"    claim:   {repro.claim.statement}",
                  f"    paper:   {repro.claim.paper_number}", f"    last:    {last}"]
    return "\n".join(lines)


def results_page(out_root: str | Path, path: str | Path) -> Path:
    """``docs/REPRODUCTIONS.md`` from the last full-scale result of each reproduction in ``out_root``
    (a reproduction without one is listed as not yet run at full scale)."""
    out_root, path = Path(out_root), Path(path)
    lines = ["# Reproductions", "",
             "Generated by `unigrad repro --page docs/REPRODUCTIONS.md` from the last full-scale run of each",
             "reproduction (`unigrad repro NAME`). Each verdict follows a rule stated before the run",
             "(`src/unigrad/repro/NAME.py`); a claim that does not reproduce is reported as measured.", "",
             "| reproduction | claim | the paper | ours | verdict | command |", "|---|---|---|---|---|---|"]
    details = []
    for name in names():
        repro = get(name)
        result = last_result(out_root, name)
        if result is None or result["scale"] != "full":
            lines.append(f"| {name} | {repro.claim.statement} | {repro.claim.paper_number} | not run at full scale | — | "
                         f"`unigrad repro {name}` |")
            continue
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {cell(repro.claim.statement)} | {cell(repro.claim.paper_number)} | {cell(result['ours'])} | "
                     f"**{result['verdict']}** | `{result['command']}` |")
        details += [f"## {result['title']}", "", f"*{result['claim']['paper']}*, {result['claim']['where']}.", "",
                    f"**Verdict: {result['verdict']}.** {result['reason']}", "",
                    f"Rule: {result['verdict_rule']}", "", f"Setting: {result['setting']}", "",
                    f"Measure: {result['measure']}", ""]
        if result["table"]:
            header = list(dict.fromkeys(key for row in result["table"] for key in row))
            details += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            details += ["| " + " | ".join(cell(fmt_value(row.get(key, ""))) for key in header) + " |"
                        for row in result["table"]]
            details.append("")
        if result.get("notes"):
            details += [result["notes"], ""]
        v = result["versions"]
        details += [f"Run {result['started']} (this invocation {result['wall_seconds'] / 60:.1f} min), commit {v.get('commit', '?')}, "
                    f"torch {v.get('torch')}, transformers {v.get('transformers')}.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, "\n".join(lines + [""] + details))
    return path


__all__ = ["command", "last_result", "listing", "page", "results_page", "run_one", "versions", "write_index"]
