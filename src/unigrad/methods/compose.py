"""Methods from configs: a registered name, explicit parts, or a weighted sum of either.

    method: {name: dpo, beta: 0.1}
    method:
      parts:
        mask: {name: ppo_clip, eps_low: 0.2, eps_high: 0.28}
        denominator: current
        advantage: {name: pairwise, score: {name: implied_reward, beta: 0.1}, link: logistic}
        likelihood: {unit: sequence, normaliser: {name: sequence_sum, per: group}}
    method:
      sum:
        - {weight: 1.0, name: sft}
        - {weight: 0.05, kl: k3}

This is the only place part names are looked up; in code, parts are plain values.
"""
from __future__ import annotations

from unigrad import estimator as E
from unigrad.estimator.normalisers import Rows
from unigrad.objectives import DIVERGENCES, KLPenalty, Sum, Term, divergence


def rows_token_mean(rows: Rows = "negative") -> E.Restrict:
    """Old config name for ``{name: restrict, normaliser: token_mean, rows: ...}``."""
    return E.Restrict(E.TokenMean(), rows)


def rows_sequence_sum(rows: Rows = "negative") -> E.Restrict:
    """Old config name for ``{name: restrict, normaliser: sequence_sum, rows: ...}``."""
    return E.Restrict(E.SequenceSum(), rows)


PARTS = {
    "mask": {"none": E.NoMask, "ppo_clip": E.PPOClip, "clamped_ratio": E.ClampedRatio},
    "denominator": {"current": E.CurrentPolicy, "behaviour": E.BehaviourPolicy, "reference": E.ReferencePolicy, "one": E.One},
    "advantage": {"constant": E.Constant, "chosen": E.Chosen, "pairwise": E.PairwisePreference,
                  "group_normalised": E.GroupNormalised, "group_centred": E.GroupCentred,
                  "leave_one_out": E.LeaveOneOut, "reinforce": E.Reinforce, "global_normalised": E.GlobalNormalised,
                  "rows_constant": E.RowsConstant, "leftover": E.LeftoverAdvantage},
    "score": {"implied_reward": E.ImpliedReward, "f_divergence_reward": E.FDivergenceReward,
              "length_normalised_reward": E.LengthNormalisedReward, "log_odds": E.LogOdds},
    "link": {"logistic": E.Logistic, "squared": E.Squared},
    "normaliser": {"token_mean": E.TokenMean, "sequence_mean": E.SequenceMean, "sequence_sum": E.SequenceSum,
                   "fixed_count": E.FixedCount, "constant": E.FixedCount, "restrict": E.Restrict,
                   "rows_token_mean": rows_token_mean, "rows_sequence_sum": rows_sequence_sum},
}
_NESTED = {"score": "score", "link": "link", "normaliser": "normaliser"}


class MethodSpecError(ValueError):
    """A method given in a config could not be built."""


def build_part(kind: str, spec, where: str):
    options = PARTS[kind]
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise MethodSpecError(f"{where}: expected a part name or {{name: ..., params}}; {kind} parts: {', '.join(options)}")
    params = dict(spec)
    name = params.pop("name")
    if name not in options:
        raise MethodSpecError(f"{where}: unknown {kind} {name!r}; choose one of {', '.join(options)}")
    for key in list(params):
        if key in _NESTED:
            params[key] = build_part(_NESTED[key], params[key], f"{where}.{key}")
        elif key == "divergence":
            if params[key] not in DIVERGENCES:
                raise MethodSpecError(f"{where}.divergence: choose one of {', '.join(DIVERGENCES)}")
            params[key] = divergence(params[key], params.pop("alpha", 0.5))
    try:
        return options[name](**params)
    except (TypeError, ValueError) as error:
        raise MethodSpecError(f"{where}: {error}") from None


def build_estimator(parts: dict, where: str) -> E.Estimator:
    unknown = set(parts) - {"mask", "denominator", "advantage", "likelihood"}
    if unknown:
        raise MethodSpecError(f"{where}: unknown part(s) {sorted(unknown)}; the parts are mask, denominator, advantage, likelihood")
    kwargs = {kind: build_part(kind, parts[kind], f"{where}.{kind}") for kind in ("mask", "denominator", "advantage") if kind in parts}
    if "likelihood" in parts:
        spec = dict(parts["likelihood"])
        normaliser = build_part("normaliser", spec.pop("normaliser", "token_mean"), f"{where}.likelihood.normaliser")
        try:
            kwargs["likelihood"] = E.Likelihood(normaliser=normaliser, **spec)
        except (TypeError, ValueError) as error:
            raise MethodSpecError(f"{where}.likelihood: {error}") from None
    return E.Estimator(**kwargs)


def build_objective(spec: dict, where: str = "method"):
    """The objective a config's ``method`` mapping describes."""
    from unigrad.methods import method
    if not isinstance(spec, dict):
        raise MethodSpecError(f"{where}: expected a mapping")
    forms = [key for key in ("name", "parts", "sum", "kl") if key in spec]
    if len(forms) != 1:
        raise MethodSpecError(f"{where}: give exactly one of name (a registered method), parts, sum or kl")
    form = forms[0]
    if form == "name":
        params = {k: v for k, v in spec.items() if k not in ("name", "weight", "term_name")}
        try:
            return method(spec["name"], **params)
        except (TypeError, ValueError) as error:
            raise MethodSpecError(f"{where}: {error}") from None
    if form == "parts":
        return build_estimator(spec["parts"], f"{where}.parts")
    if form == "kl":
        return KLPenalty(estimator=spec["kl"])
    terms = []
    for index, term in enumerate(spec["sum"]):
        term = dict(term)
        weight = term.pop("weight", 1.0)
        name = term.pop("term_name", term.get("name", "kl" if "kl" in term else f"term{index}"))
        terms.append(Term(float(weight), build_objective(term, f"{where}.sum[{index}]"), str(name)))
    return Sum(tuple(terms))
