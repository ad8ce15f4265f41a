"""The command line as a user meets it: training, resuming, errors, methods."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resume_check import final_record, kill_and_resume

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny-dpo.yaml")


def unigrad(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "unigrad", *args], capture_output=True, text=True, cwd=cwd)


def test_methods_lists_every_method_with_its_four_parts():
    result = unigrad("methods")
    assert result.returncode == 0
    for name in ("sft", "dpo", "ipo", "simpo", "orpo", "f-dpo"):
        assert f"\n{name}(" in "\n" + result.stdout
    assert result.stdout.count("denominator") >= 7  # orpo has two terms


def test_tiny_dpo_trains_and_the_held_out_margin_rises(tmp_path):
    result = unigrad("train", TINY, f"output_dir={tmp_path}", "train.steps=8", "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["eval/reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["eval/reward_margin"] > 0.05
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (tmp_path / "checkpoints").is_dir()


def test_killed_run_resumes_to_the_same_result(tmp_path):
    straight, resumed, killed_at = kill_and_resume(TINY, tmp_path, kill_after=3, overrides=["train.steps=6"])
    assert 3 <= killed_at < 6
    assert straight["step"] == resumed["step"] == 6
    assert resumed["objective"] == pytest.approx(straight["objective"], abs=1e-5)
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_gradient_accumulation_gives_the_same_model(tmp_path):
    common = [TINY, "train.steps=2", "train.eval_every=0", "train.save_every=0", "data.eval=null", "--no-progress"]
    assert unigrad("train", *common, f"output_dir={tmp_path / 'one'}").returncode == 0
    assert unigrad("train", *common, f"output_dir={tmp_path / 'two'}", "train.grad_accum=2").returncode == 0
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_malformed_data_line_gives_one_paragraph_without_traceback(tmp_path):
    result = unigrad("train", TINY, f"output_dir={tmp_path}", "data.train=data/bad/malformed.jsonl")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("unigrad: error")]
    assert len(error) == 1 and "malformed.jsonl" in error[0] and "line 3" in error[0]
    debug = unigrad("train", TINY, f"output_dir={tmp_path}", "data.train=data/bad/malformed.jsonl", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("override, expected", [
    ("train.lrr=1", "did you mean 'lr'"),
    ("train.steps=many", "train.steps: expected int"),
    ("method.name=dpoo", "unknown method 'dpoo'"),
    ("model=./no-such-model-folder", "no-such-model-folder"),
    ("data.format=sft", "data.format: pairs"),
])
def test_bad_config_values_are_named(tmp_path, override, expected):
    result = unigrad("train", TINY, f"output_dir={tmp_path}", override)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_method_written_from_parts_trains(tmp_path):
    result = unigrad("train", str(ROOT / "configs" / "custom-parts.yaml"), f"output_dir={tmp_path}", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert final_record(tmp_path)["step"] == 4


def test_lora_trains_and_saves_a_plain_model(tmp_path):
    result = unigrad("train", TINY, f"output_dir={tmp_path}", "train.steps=2", "model.lora.r=4",
                     "reference.precompute=false", "train.save_every=0", "--no-progress")
    assert result.returncode == 0, result.stderr
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_online_hpt_runs_with_rollouts_rewards_and_a_report(tmp_path):
    result = unigrad("train", str(ROOT / "configs" / "tiny-hpt.yaml"), f"output_dir={tmp_path}", "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    last = rows[-1]
    for key in ("reward_mean", "sft_fraction", "kl_ref", "completion_length", "reward/failed"):
        assert key in last, key
    assert (tmp_path / "report" / "index.html").exists()


def test_failing_reward_function_leaves_the_run_going_and_is_counted(tmp_path):
    reward = tmp_path / "flaky.py"
    reward.write_text("def reward(prompt, completion, answer, **meta):\n"
                      "    if len(completion) % 2:\n        raise RuntimeError('flaky reward')\n    return 1.0\n")
    result = unigrad("train", str(ROOT / "configs" / "tiny-hpt.yaml"), f"output_dir={tmp_path / 'run'}",
                     f"reward.function={reward}:reward", "train.steps=2", "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    failed = [row["reward/failed"] for row in rows if "reward/failed" in row]
    assert sum(failed) > 0
    assert any("flaky reward" in row.get("reward_error_example", "") for row in rows)


def test_distillation_through_the_loop(tmp_path):
    result = unigrad("train", str(ROOT / "configs" / "tiny-kd.yaml"), f"output_dir={tmp_path}", "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval/objective"] < rows[0]["eval/objective"]
    missing = unigrad("train", str(ROOT / "configs" / "tiny-kd.yaml"), f"output_dir={tmp_path}", "teacher.name=null")
    assert missing.returncode == 2 and "teacher.name" in missing.stderr


def test_a_fresh_run_does_not_reuse_another_runs_reference_cache(tmp_path):
    first = unigrad("train", TINY, f"output_dir={tmp_path}", "train.steps=1", "data.limit=20", "--no-progress")
    assert first.returncode == 0, first.stderr
    second = unigrad("train", TINY, f"output_dir={tmp_path}", "train.steps=1", "data.limit=40", "--no-progress")
    assert second.returncode == 0, second.stderr   # different data: the cache is recomputed, not misread
