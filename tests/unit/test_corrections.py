"""Domains, config errors and the objective-tree walk of the new masks and the rollout corrections."""
import pytest
import torch

import unigrad as ug
from unigrad.config import ConfigError, CorrectionConfig, load_config
from unigrad.estimator import CISPO, SAPO, DualClip, ParameterError
from unigrad.estimator.corrections import (
    Corrected, MaskedIS, TruncatedIS, apply_rollout_correction, correction_of, with_correction,
)
from unigrad.experience import RolloutSource

ONLINE = ("model: tiny-random\nmethod: {name: grpo}\ndata: {format: prompts, task: {name: arithmetic}}\n"
          "rollout: {recompute_logp_old: true, correction: {kind: tis}}\n")


@pytest.mark.parametrize("make, parameter", [
    (lambda: DualClip(c=1.0), "c"), (lambda: DualClip(eps_low=1.5), "eps_low"),
    (lambda: CISPO(eps_low=1.5), "eps_low"), (lambda: CISPO(eps_high=-0.1), "eps_high"),
    (lambda: SAPO(tau_pos=0.0), "tau_pos"), (lambda: SAPO(tau_neg=-1.0), "tau_neg"),
    (lambda: TruncatedIS(cap=0.5), "cap"), (lambda: TruncatedIS(level="word"), "level"),
    (lambda: MaskedIS(low=1.5), "low"), (lambda: MaskedIS(high=0.9), "high"),
    (lambda: ug.method("grpo", dual_clip=1.0), "dual_clip"), (lambda: ug.method("dapo", dual_clip=True), "dual_clip"),
    (lambda: ug.method("cispo", eps_low=2.0), "eps_low"), (lambda: ug.method("sapo", tau_neg=0), "tau_neg"),
])
def test_parameters_outside_their_domain_are_refused(make, parameter):
    with pytest.raises(ParameterError, match=parameter):
        make()


def test_dual_clip_mask_and_value_ratio():
    """Â < 0 and r > c: cut, valued at c; everything else as PPO's clip."""
    clip = DualClip(eps_low=0.2, eps_high=0.3, c=3.0)
    ratio = torch.tensor([0.7, 0.7, 1.35, 1.35, 2.0, 4.0, 4.0])
    adv = torch.tensor([-1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0])
    assert clip(ratio, adv, None).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert clip.value_ratio(ratio, adv, None).tolist() == pytest.approx([0.8, 0.7, 1.3, 1.35, 2.0, 3.0, 1.3])


def test_sapo_gate_is_the_policy_gradient_on_policy():
    one, adv = torch.ones(2, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    gate = SAPO(tau_pos=1.0, tau_neg=1.05)
    assert gate(one, adv, None).tolist() == pytest.approx([1.0, 1.0])                 # f′(1) = 1
    assert gate.value_ratio(one, adv, None).tolist() == pytest.approx([2.0, 2.0 / 1.05])   # f(1) = 2/τ


def test_correction_wraps_only_the_estimators_on_pi_old():
    hpt = with_correction(ug.method("hpt"), TruncatedIS())
    assert isinstance(hpt.above.mask, Corrected) and not isinstance(hpt.below.mask, Corrected)
    assert {"logp_sampler", "logp_old"} <= hpt.requires
    kl = with_correction(ug.method("grpo", beta=0.04), MaskedIS())
    assert isinstance(kl.terms[0].objective.mask, Corrected)
    assert type(kl.terms[1].objective).__name__ == "KLPenalty"
    gspo = with_correction(ug.method("gspo"), MaskedIS(level="sequence"))
    assert isinstance(gspo.mask, Corrected)


@pytest.mark.parametrize("objective, correction, message", [
    (lambda: ug.method("rloo"), TruncatedIS(), "never use π_old"),
    (lambda: ug.method("dpo"), MaskedIS(), "never use π_old"),
    (lambda: ug.method("gspo"), TruncatedIS(level="token"), "one per sequence"),
])
def test_correction_on_an_objective_it_cannot_correct_is_refused(objective, correction, message):
    with pytest.raises(ParameterError, match=message):
        with_correction(objective(), correction)
    settings = CorrectionConfig(kind="tis" if isinstance(correction, TruncatedIS) else "mis", level=correction.level)
    with pytest.raises(ConfigError, match="rollout.correction"):
        apply_rollout_correction(objective(), settings)


def test_config_builds_the_correction_with_the_kinds_default_level():
    assert correction_of(CorrectionConfig()) is None
    assert correction_of(CorrectionConfig(kind="tis")) == TruncatedIS(2.0, "token")
    assert correction_of(CorrectionConfig(kind="mis", high=2.5)) == MaskedIS(0.0, 2.5, "sequence")
    config = load_config(None, text=ONLINE)
    assert config.rollout.recompute_logp_old and config.rollout.correction.kind == "tis"


@pytest.mark.parametrize("overrides, key", [
    (["rollout.recompute_logp_old=false"], "rollout.recompute_logp_old: true"),
    (["rollout.correction.cap=0.5"], "rollout.correction.cap"),
    (["rollout.correction={kind: mis, low: 2.0}"], "rollout.correction.low"),
    (["rollout.correction.level=word"], "rollout.correction.level"),
    (["rollout.correction.kind=icepop"], "rollout.correction.kind"),
    (["data={format: pairs, train: x.jsonl}", "rollout.correction.kind=none"], "rollout.recompute_logp_old"),
])
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides, text=ONLINE)


def test_rollouts_provide_the_sampler_logprobs_when_pi_old_is_recomputed():
    assert "logp_sampler" in RolloutSource.fields(False, True)
    assert "logp_sampler" not in RolloutSource.fields(True)
