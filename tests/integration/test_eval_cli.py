"""``unigrad eval`` and ``unigrad report`` as a user runs them."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def unigrad(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "unigrad", *args], capture_output=True, text=True, cwd=cwd)


def test_eval_on_tiny_random_prints_accuracy_and_pass_at_k(tmp_path):
    out = tmp_path / "eval.json"
    result = unigrad("eval", "--model", "tiny-random", "--limit", "4", "--max-new-tokens", "6", "--k", "1", "2",
                     "--samples", "2", "--no-progress", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "accuracy (greedy)" in result.stdout and "pass@2" in result.stdout
    data = json.loads(out.read_text())
    assert data["num_prompts"] == 4 and data["model"] == "tiny-random" and len(data["records"]) == 4
    assert 0.0 <= data["accuracy"] <= 1.0 and 0.0 <= data["pass@2"] <= 1.0


def test_eval_reports_user_errors_in_one_line():
    result = unigrad("eval", "--model", "tiny-random", "--reward", "no_such_reward")
    assert result.returncode == 2 and "no_such_reward" in result.stderr and "Traceback" not in result.stderr
    result = unigrad("eval", "--model", "tiny-random", "--k", "4", "--samples", "2")
    assert result.returncode == 2 and "--samples" in result.stderr


def test_report_prints_the_index(tmp_path):
    rows = [{"step": s, "objective": 1.0 / (s + 1), "lr": 1e-5} for s in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = unigrad("report", str(tmp_path))
    assert result.returncode == 0, result.stderr
    index = Path(result.stdout.strip())
    assert index == tmp_path / "report" / "index.html" and index.is_file()
    assert (tmp_path / "report" / "objective.png").is_file()
    missing = unigrad("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "metrics.jsonl" in missing.stderr
