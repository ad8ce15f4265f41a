"""`online-dpo` end to end on the tiny model: pairs sampled from the policy and ranked by the rule preference
or by a tiny-random judge LM (a model role), the DPO loss; resume from a checkpoint is exact; offline data
is refused; Nash-MD's opponent is drawn from the geometric mixture with the reference."""
import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from unigrad.config import ConfigError, load_config
from unigrad.models import load_model
from unigrad.train import train

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["train.threads=1", "train.eval_every=0"]


def _train(out: Path, *extra: str, resume: bool = False) -> list[dict]:
    train(load_config(str(ROOT / "configs" / "tiny-online-dpo.yaml"), [*COMMON, f"output_dir={out}", *extra]),
          resume=resume, progress=False)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _moved(out: Path) -> float:
    initial = load_model("tiny-random")[0].state_dict()
    final = load_file(str(out / "final" / "model.safetensors"))
    return max(float((final[k] - initial[k]).abs().max()) for k in final)


def test_online_dpo_with_the_rule_preference_trains(tmp_path):
    (tmp_path / "digits.py").write_text("def digits(prompt, completion, answer=None, **meta):\n"
                                        "    return float(sum(c.isdigit() for c in completion))\n")
    steps = [m for m in _train(tmp_path / "rule", f"reward.function={tmp_path / 'digits.py'}:digits",
                               "train.steps=4") if "objective" in m]
    assert len(steps) == 4 and _moved(tmp_path / "rule") > 1e-4
    for m in steps:
        assert m["preference/queries"] == 4.0 and "reward_margin" in m and "logp_chosen" in m
        all_tied = m["preference/ties"] == 4.0        # then a sample against itself: no gradient
        assert m["preference/dropped"] == m["preference/ties"]
        assert m["preference/chosen_mean"] == (0.5 if all_tied else 1.0)
    assert any(m["preference/ties"] < 4.0 for m in steps)


def test_online_dpo_with_a_judge_model_role_trains(tmp_path):
    steps = [m for m in _train(tmp_path / "judge", "preference.kind=judge", "preference.model=tiny-random:1",
                               "preference.ties=drop") if "objective" in m]
    assert len(steps) == 3 and _moved(tmp_path / "judge") > 1e-4
    for m in steps:      # a judge's P is rarely exactly ½; the chosen sample is the one it prefers
        assert m["preference/queries"] == 4.0 and 0.5 < m["preference/chosen_mean"] < 1.0


def test_online_dpo_resumes_exactly(tmp_path):
    extra = ["train.steps=4", "train.save_every=2", "data.task.eval_size=2"]
    _train(tmp_path / "straight", *extra)
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-000002",
                    tmp_path / "resumed" / "checkpoints" / "step-000002")
    logged = _train(tmp_path / "resumed", *extra, resume=True)
    assert [m["step"] for m in logged if "objective" in m] == [3, 4]
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_online_dpo_refuses_offline_data(tmp_path):
    from unigrad.run import assemble
    offline = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), ["method.name=online-dpo", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.format: prompts"):
        assemble(offline)


def test_nash_md_samples_its_opponent_from_the_geometric_mixture_with_the_reference(tmp_path):
    from unigrad.rollout.hf import HFSampler
    from unigrad.run import assemble
    run = assemble(load_config(str(ROOT / "configs" / "tiny-online-dpo.yaml"),
                               ["method={name: nash-md, beta: 0.125}", f"output_dir={tmp_path}"]))
    opponent = run.experience.opponent
    assert isinstance(opponent, HFSampler) and opponent.beta == 0.125 and opponent.model is run.experience.sampler.model
    assert opponent.mix_with is not run.model and not any(p.requires_grad for p in opponent.mix_with.parameters())
    lora = load_config(str(ROOT / "configs" / "tiny-online-dpo.yaml"),
                       ["method={name: nash-md, beta: 0.125}", "model.lora={r: 4}", f"output_dir={tmp_path / 'lora'}"])
    with pytest.raises(ConfigError, match="geometric mixture"):
        assemble(lora)


def test_nash_md_self_play_trains_on_per_sample_preferences(tmp_path):
    steps = [m for m in _train(tmp_path / "nash", "method={name: nash-md, beta: 0.0}", "rollout.num_generations=2",
                               "train.steps=2") if "objective" in m]
    assert len(steps) == 2 and all(m["preference/queries"] == 8.0 and "preference_mean" in m for m in steps)


def test_nash_mp_draws_again_at_the_half_point_and_keeps_the_anchor(tmp_path):
    """Nash-MP on a language model: the rows carry log π_k of the step's start; at the half point the step
    is drawn again from the moved policy, with log π_k still of the start's weights."""
    import copy

    import torch

    from unigrad.reference import snapshot_logprobs
    from unigrad.run import assemble
    mp = ["method={name: nash-mp, beta: 0.1}", "rollout.num_generations=2"]
    with pytest.raises(ConfigError, match="extragradient"):
        assemble(load_config(str(ROOT / "configs" / "tiny-online-dpo.yaml"), [*mp, f"output_dir={tmp_path / 'x'}"]))
    run = assemble(load_config(str(ROOT / "configs" / "tiny-online-dpo.yaml"),
                               [*mp, "train.update_rule=extragradient", f"output_dir={tmp_path / 'a'}"]))
    first = run.experience(0)
    start = copy.deepcopy(run.model)
    pad = run.tokenizer.pad_token_id
    mask = torch.stack([torch.arange(first.fields["logp_anchor"].shape[1]) < len(s.completion_ids)
                        for s in first.sequences])
    assert torch.allclose(first.fields["logp_anchor"][mask], first.fields["logp_old"][mask], atol=1e-4)
    with torch.no_grad():                          # the half step moves the policy
        for p in run.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    again = first.again()
    assert [s.completion_ids for s in again.sequences] != [s.completion_ids for s in first.sequences]
    expected = snapshot_logprobs(start, again.sequences, pad, 8)
    assert torch.allclose(again.fields["logp_anchor"], expected[:, :again.fields["logp_anchor"].shape[1]], atol=1e-5)
    steps = [m for m in _train(tmp_path / "mp", *mp, "train.update_rule=extragradient", "train.steps=2")
             if "objective" in m]
    assert len(steps) == 2 and all("half_step_objective" in m and "preference_mean" in m for m in steps)
