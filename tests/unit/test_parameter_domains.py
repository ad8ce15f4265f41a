"""Parameter domains: every method's and part's parameters are checked at construction, with the same
message from the Python API and from a config (where the parameter is named by its full key)."""
import inspect
import math
from functools import partial
import subprocess
import sys
from pathlib import Path

import pytest

import unigrad as ug
from unigrad import estimator as E
from unigrad.cli import main
from unigrad.estimator import ParameterError
from unigrad.methods import REGISTRY
from unigrad.methods.compose import PARTS, MethodSpecError, build_objective
from unigrad.objectives import (
    Alpha, BalancedKD, Gate, InvertedHinge, KLPenalty, PlackettLuce, Sinkhorn, Sum, Term, TokenDivergence,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny-dpo.yaml")
NAN, INF = math.nan, math.inf

# (method, bad parameters, the message's fragment "parameter must be <domain>")
METHOD_CASES = [
    ("dpo", {"beta": -1}, "beta must be > 0"),
    ("dpo", {"beta": 0}, "beta must be > 0"),
    ("dpo", {"beta": NAN}, "beta must be a finite number > 0"),
    ("dpo", {"beta": True}, "beta must be a finite number > 0"),
    ("ipo", {"tau": 0}, "tau must be > 0"),
    ("simpo", {"beta": -2.0}, "beta must be > 0"),
    ("simpo", {"gamma": -0.5}, "gamma must be ≥ 0"),
    ("orpo", {"lam": -0.1}, "lam must be ≥ 0"),
    ("f-dpo", {"beta": -0.1}, "beta must be > 0"),
    ("f-dpo", {"divergence": "hellinger"}, "divergence must be one of 'reverse_kl'"),
    ("f-dpo", {"divergence": "alpha", "alpha": 1.0}, "alpha must be in (0, 1)"),
    ("grad-diff", {"retain_weight": -1}, "retain_weight must be ≥ 0"),
    ("grad-diff", {"retain": "mse"}, "retain must be one of 'nll', 'kl'"),
    ("grad-diff", {"retain": "kl", "kl_estimator": "k1"}, "kl_estimator must be one of 'k2', 'k3'"),
    ("npo", {"beta": 0}, "beta must be > 0"),
    ("npo", {"retain_weight": INF}, "retain_weight must be a finite number ≥ 0"),
    ("ihl", {"retain_weight": -1.0}, "retain_weight must be ≥ 0"),
    ("flat", {"divergence": "neyman"}, "divergence must be one of"),
    ("safe-align", {"lam": -1}, "lam must be ≥ 0"),
    ("safe-align", {"loss_threshold": 0}, "loss_threshold must be > 0"),
    ("asft", {"lam": -0.1}, "lam must be ≥ 0"),
    ("ddo", {"beta": -0.1}, "beta must be > 0"),
    ("ddo", {"alpha": -1}, "alpha must be ≥ 0"),
    ("a-lol", {"clip": 1.5}, "clip must be in [0, 1]"),
    ("a-lol-seq", {"clip": -0.1}, "clip must be in [0, 1]"),
    ("a-lol-kl", {"kl_beta": -0.1}, "kl_beta must be ≥ 0"),
    ("grpo", {"eps": 0}, "eps must be in (0, 1]"),
    ("grpo", {"beta": -0.04}, "beta must be ≥ 0"),
    ("dr-grpo", {"max_tokens": 0}, "max_tokens must be > 0"),
    ("dapo", {"eps_low": -0.1}, "eps_low must be in [0, 1]"),
    ("dapo", {"eps_high": -0.1}, "eps_high must be ≥ 0"),
    ("gspo", {"eps_low": 2}, "eps_low must be in [0, 1]"),
    ("reinforce", {"baseline": NAN}, "baseline must be a finite number"),
    ("reinforce", {"batch_mean": "no"}, "batch_mean must be true or false"),
    ("reinforce++", {"eps": -0.2}, "eps must be in (0, 1]"),
    ("reinforce++", {"group_baseline": 1}, "group_baseline must be true or false"),
    ("hpt", {"gamma": 2}, "gamma must be in [0, 1]"),
    ("hpt", {"gamma": -0.1}, "gamma must be in [0, 1]"),
    ("hpt", {"eps": 0}, "eps must be in (0, 1]"),
    ("hpt", {"sft_weight": -1}, "sft_weight must be ≥ 0"),
    ("kd-forward", {"support": "all"}, "support must be one of 'bucket', 'renormalise'"),
    ("kd-js", {"beta": 1.5}, "beta must be in [0, 1]"),
    ("bd-kd", {"delta": 0.5}, "delta must be ≥ 1"),
    ("sinkd", {"epsilon": 0}, "epsilon must be > 0"),
    ("sinkd", {"iterations": 0}, "iterations must be an integer ≥ 1"),
    ("sinkd", {"iterations": 2.5}, "iterations must be an integer ≥ 1"),
    ("sinkd", {"temperature": -1}, "temperature must be > 0"),
    ("pld", {"label": "student"}, "label must be one of 'token', 'teacher'"),
]


def _id(case):
    return f"{case[0] if isinstance(case[0], str) else _owner(case[0])}[{','.join(f'{k}={v}' for k, v in case[1].items())}]"


@pytest.mark.parametrize("case", METHOD_CASES, ids=_id)
def test_method_parameters_are_refused_outside_their_domain(case):
    name, params, fragment = case
    with pytest.raises(ParameterError) as python_api:
        ug.method(name, **params)
    assert str(python_api.value).startswith(f"{name}: {fragment}") and "got " in str(python_api.value)
    with pytest.raises(MethodSpecError) as config:
        build_objective({"name": name, **params})
    assert str(config.value).startswith(f"method.{fragment}") and f"for {name}" in str(config.value)


# Parts: (part, bad parameters, fragment, the config spec holding them and the key it sits under, or None)
def _in(kind, name):
    def spec(params):
        return {"parts": {kind: {"name": name, **params}}}
    return spec, f"method.parts.{kind}"


def _nested(key, name):
    def spec(params):
        return {"parts": {"advantage": {"name": "pairwise", key: {"name": name, **params}}}}
    return spec, f"method.parts.advantage.{key}"


def _normaliser(name):
    def spec(params):
        return {"parts": {"likelihood": {"normaliser": {"name": name, **params}}}}
    return spec, "method.parts.likelihood.normaliser"


def _divergence(params):
    return {"parts": {"advantage": {"name": "pairwise", "score": {"name": "f_divergence_reward", "divergence": "alpha",
                                                                    **params}}}}


def _sft_term(params):
    return {"sum": [{"name": "sft", **params}]}


PART_CASES = [
    (E.PPOClip, {"eps_low": -0.1}, "eps_low must be in [0, 1]", _in("mask", "ppo_clip")),
    (E.PPOClip, {"eps_high": -0.1}, "eps_high must be ≥ 0", _in("mask", "ppo_clip")),
    (E.ClampedRatio, {"eps": 1.5}, "eps must be in [0, 1]", _in("mask", "clamped_ratio")),
    (E.Constant, {"value": NAN}, "value must be a finite number", _in("advantage", "constant")),
    (E.RowsConstant, {"rows": "all"}, "rows must be one of 'negative', 'positive'", _in("advantage", "rows_constant")),
    (E.GroupNormalised, {"eps": -1e-6}, "eps must be ≥ 0", _in("advantage", "group_normalised")),
    (E.GroupNormalised, {"unbiased": "yes"}, "unbiased must be true or false", _in("advantage", "group_normalised")),
    (E.Reinforce, {"batch_mean": 1}, "batch_mean must be true or false", _in("advantage", "reinforce")),
    (E.GlobalNormalised, {"eps": 0}, "eps must be > 0", _in("advantage", "global_normalised")),
    (E.GlobalNormalised, {"over": "batch"}, "over must be one of 'token', 'sequence'", _in("advantage", "global_normalised")),
    (E.LeftoverAdvantage, {"clip": 2}, "clip must be in [0, 1]", _in("advantage", "leftover")),
    (E.LeftoverAdvantage, {"kl_beta": -1}, "kl_beta must be ≥ 0", _in("advantage", "leftover")),
    (E.LeftoverAdvantage, {"importance": "row"}, "importance must be one of", _in("advantage", "leftover")),
    (E.ImpliedReward, {"beta": -1}, "beta must be > 0", _nested("score", "implied_reward")),
    (E.FDivergenceReward, {"beta": 0}, "beta must be > 0", _nested("score", "f_divergence_reward")),
    (E.LengthNormalisedReward, {"beta": -2}, "beta must be > 0", _nested("score", "length_normalised_reward")),
    (E.Logistic, {"margin": INF}, "margin must be a finite number", _nested("link", "logistic")),
    (E.Squared, {"target": NAN}, "target must be a finite number", _nested("link", "squared")),
    (E.FixedCount, {"c": 0}, "c must be > 0", _normaliser("fixed_count")),
    (E.SequenceSum, {"per": "pair"}, "per must be one of 'sequence', 'group'", _normaliser("sequence_sum")),
    (E.SequenceMean, {"per": 2}, "per must be one of 'sequence', 'group'", _normaliser("sequence_mean")),
    (E.Restrict, {"rows": "forget"}, "rows must be one of 'negative', 'positive'", _normaliser("restrict")),
    (E.Likelihood, {"unit": "word"}, "unit must be one of 'token', 'sequence'",
     (lambda params: {"parts": {"likelihood": params}}, "method.parts.likelihood")),
    (Alpha, {"alpha": 2}, "alpha must be in (0, 1)", (_divergence, "method.parts.advantage.score")),
    (partial(Term, objective=ug.method("sft")), {"weight": NAN}, "weight must be a finite number",
     (_sft_term, "method.sum[0]")),
    (E.AbsoluteLikelihood, {"lam": -0.1}, "lam must be ≥ 0", None),
    (E.LogSigmoidRatio, {"beta": -0.1}, "beta must be > 0", None),
    (E.LogSigmoidRatio, {"direction": True}, "direction must be one of -1, 1", None),
    (E.ReferenceKL, {"estimator": "k1"}, "estimator must be one of 'k2', 'k3'", None),
    (E.SafeAlignWeight, {"loss_threshold": -1.0}, "loss_threshold must be > 0", None),
    (E.TokenProbability, {"rows": "retain"}, "rows must be one of", None),
    (E.FlatTemplate, {"divergence": "neyman"}, "divergence must be one of", None),
    (KLPenalty, {"estimator": "k4"}, "estimator must be one of 'k1', 'k2', 'k3'", None),
    (TokenDivergence, {"beta": -0.5}, "beta must be in [0, 1]", None),
    (BalancedKD, {"delta": NAN}, "delta must be a finite number ≥ 1", None),
    (Sinkhorn, {"iterations": True}, "iterations must be an integer ≥ 1", None),
    (PlackettLuce, {"label": None}, "label must be one of", None),
    (InvertedHinge, {"field": ""}, "field must be a non-empty string", None),
    (partial(Gate, below=ug.method("sft"), above=ug.method("grpo")), {"gamma": 2},
     "gamma must be in [0, 1]", None),
]


def _owner(part) -> str:
    return getattr(part, "func", part).__name__


@pytest.mark.parametrize("case", PART_CASES, ids=_id)
def test_part_parameters_are_refused_outside_their_domain(case):
    part, params, fragment, config = case
    with pytest.raises(ParameterError) as python_api:
        part(**params)
    assert fragment in str(python_api.value) and str(python_api.value).startswith(_owner(part))
    if config is not None:
        spec, key = config
        with pytest.raises(MethodSpecError) as from_config:
            build_objective(spec(params))
        assert str(from_config.value).startswith(f"{key}.{fragment}"), str(from_config.value)


def _wrong_type(default):
    """A value of the wrong type for a parameter with this default."""
    if isinstance(default, bool):
        return ["yes"]
    if isinstance(default, (int, float)):
        return [True, NAN, "0.1"]
    if isinstance(default, str):
        return [3]
    return [NAN]                                        # None: an optional number (safe-align's threshold)


PARAMETERS = [(name, p.name, bad) for name, factory in sorted(REGISTRY.items())
              for p in inspect.signature(factory).parameters.values() for bad in _wrong_type(p.default)]


@pytest.mark.parametrize("name, parameter, bad", PARAMETERS, ids=lambda x: repr(x))
def test_every_method_parameter_is_checked(name, parameter, bad):
    with pytest.raises(ParameterError) as python_api:
        ug.method(name, **{parameter: bad})
    assert (python_api.value.owner, python_api.value.parameter) == (name, parameter)
    with pytest.raises(MethodSpecError, match=rf"^method\.{parameter} must be "):
        build_objective({"name": name, parameter: bad})


def test_every_registered_method_and_part_constructs_with_its_defaults():
    for name, factory in REGISTRY.items():
        assert ug.method(name) == factory()
    for kind, options in PARTS.items():
        for build in options.values():
            build()


@pytest.mark.parametrize("build", [
    lambda: ug.method("hpt", gamma=0), lambda: ug.method("hpt", gamma=1), lambda: ug.method("dapo", eps_low=1.0),
    lambda: ug.method("kd-js", beta=0), lambda: ug.method("kd-js", beta=1), lambda: ug.method("simpo", gamma=0),
    lambda: ug.method("ihl", retain_weight=0), lambda: ug.method("sinkd", iterations=20.0),
    lambda: ug.method("reinforce", baseline=-1), lambda: ug.method("safe-align", loss_threshold=None),
    lambda: ug.method("grpo", eps=1), lambda: ug.method("bd-kd", delta=1), lambda: E.PPOClip(0, 0),
    lambda: E.GroupNormalised(eps=0.0), lambda: E.Constant(-1), lambda: Term(-0.5, ug.method("sft")),
    lambda: Sum([Term(1.0, ug.method("sft"))]),
])
def test_the_edges_of_each_domain_are_accepted(build):
    build()


def test_sums_and_kl_specs_are_checked():
    with pytest.raises(ParameterError, match="terms must be a non-empty sequence"):
        Sum(())
    for spec, message in [({"kl": "k9"}, "method.kl must be one of 'k1', 'k2', 'k3'"),
                          ({"sum": []}, "method.sum: expected a non-empty list"),
                          ({"sum": ["sft"]}, "method.sum[0]: expected a mapping"),
                          ({"sum": [{"weight": "x", "name": "sft"}]}, "method.sum[0].weight must be a finite number"),
                          ({"parts": {}, "beta": 0.1}, "method: unknown key(s) beta beside parts"),
                          ({"parts": "dpo"}, "method.parts: expected a mapping"),
                          ({"parts": {"likelihood": "sequence"}}, "method.parts.likelihood: expected"),
                          ({"name": ["dpo"]}, "unknown method ['dpo']")]:
        with pytest.raises(MethodSpecError) as error:
            build_objective(spec)
        assert message in str(error.value)


def test_the_cli_names_the_config_key_in_one_paragraph(tmp_path, capsys):
    result = subprocess.run([sys.executable, "-m", "unigrad", "train", TINY, f"output_dir={tmp_path / 'a'}",
                             "method={name: dpo, beta: -1}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "unigrad: error: method.beta must be > 0 for dpo" in result.stderr and "Traceback" not in result.stderr
    assert main(["train", TINY, f"output_dir={tmp_path / 'b'}", "method.beta=.nan"]) == 2
    assert "method.beta must be a finite number > 0 for dpo" in capsys.readouterr().err
