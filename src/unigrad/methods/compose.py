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
from unigrad.estimator.checks import ParameterError
from unigrad.estimator.normalisers import Rows
from unigrad.objectives import DIVERGENCES, KLPenalty, Sum, Term, divergence


def rows_token_mean(rows: Rows = "negative") -> E.Restrict:
    """Old config name for ``{name: restrict, normaliser: token_mean, rows: ...}``."""
    return E.Restrict(E.TokenMean(), rows)


def rows_sequence_sum(rows: Rows = "negative") -> E.Restrict:
    """Old config name for ``{name: restrict, normaliser: sequence_sum, rows: ...}``."""
    return E.Restrict(E.SequenceSum(), rows)


PARTS = {
    "mask": {"none": E.NoMask, "ppo_clip": E.PPOClip, "clamped_ratio": E.ClampedRatio, "dual_clip": E.DualClip,
             "cispo": E.CISPO, "sapo": E.SAPO},
    "denominator": {"current": E.CurrentPolicy, "behaviour": E.BehaviourPolicy, "reference": E.ReferencePolicy, "one": E.One},
    "advantage": {"constant": E.Constant, "chosen": E.Chosen, "pairwise": E.PairwisePreference,
                  "group_normalised": E.GroupNormalised, "group_centred": E.GroupCentred,
                  "leave_one_out": E.LeaveOneOut, "reinforce": E.Reinforce, "global_normalised": E.GlobalNormalised,
                  "rows_constant": E.RowsConstant, "leftover": E.LeftoverAdvantage, "gae": E.GAE},
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


def _spec_error(error: Exception, where: str, given) -> MethodSpecError:
    """The config's message for ``error``: a parameter outside its domain is named by its full key
    (``method.beta``) when the config gave it; any other error is prefixed with ``where``."""
    if isinstance(error, ParameterError) and error.parameter in given:
        return MethodSpecError(error.at(where))
    return MethodSpecError(f"{where}: {error}")


def _construct(build, params: dict, where: str):
    """``build(**params)``, with its TypeError or ValueError told as a MethodSpecError at ``where``."""
    try:
        return build(**params)
    except MethodSpecError:
        raise
    except (TypeError, ValueError) as error:
        raise _spec_error(error, where, params) from None


def _divergence(name, alpha, where: str):
    if not isinstance(name, str) or name not in DIVERGENCES:
        raise MethodSpecError(f"{where}.divergence: choose one of {', '.join(DIVERGENCES)}, got {name!r}")
    return _construct(lambda alpha: divergence(name, alpha), {"alpha": alpha}, where)


def build_part(kind: str, spec, where: str):
    options = PARTS[kind]
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise MethodSpecError(f"{where}: expected a part name or {{name: ..., params}}; {kind} parts: {', '.join(options)}")
    params = dict(spec)
    name = params.pop("name")
    if not isinstance(name, str) or name not in options:
        raise MethodSpecError(f"{where}: unknown {kind} {name!r}; choose one of {', '.join(options)}")
    for key in list(params):
        if key in _NESTED:
            params[key] = build_part(_NESTED[key], params[key], f"{where}.{key}")
        elif key == "divergence":
            params[key] = _divergence(params[key], params.pop("alpha", 0.5), where)
    return _construct(options[name], params, where)


def build_estimator(parts, where: str) -> E.Estimator:
    if not isinstance(parts, dict):
        raise MethodSpecError(f"{where}: expected a mapping of the parts mask, denominator, advantage, likelihood")
    unknown = set(parts) - {"mask", "denominator", "advantage", "likelihood"}
    if unknown:
        raise MethodSpecError(f"{where}: unknown part(s) {sorted(unknown)}; the parts are mask, denominator, advantage, likelihood")
    kwargs = {kind: build_part(kind, parts[kind], f"{where}.{kind}") for kind in ("mask", "denominator", "advantage") if kind in parts}
    if "likelihood" in parts:
        spec = parts["likelihood"]
        if not isinstance(spec, dict):
            raise MethodSpecError(f"{where}.likelihood: expected {{unit: token or sequence, normaliser: ...}}")
        spec = dict(spec)
        normaliser = build_part("normaliser", spec.pop("normaliser", "token_mean"), f"{where}.likelihood.normaliser")
        kwargs["likelihood"] = _construct(E.Likelihood, {"normaliser": normaliser, **spec}, f"{where}.likelihood")
    return _construct(E.Estimator, kwargs, where)


def _named(spec: dict, where: str):
    from unigrad.methods import method
    params = {k: v for k, v in spec.items() if k != "name"}
    return _construct(lambda **given: method(spec["name"], **given), params, where)


def _kl(estimator, where: str) -> KLPenalty:
    try:
        return KLPenalty(estimator=estimator)
    except ParameterError as error:
        raise MethodSpecError(error.at(where, "kl")) from None


def _sum(terms, where: str) -> Sum:
    if not isinstance(terms, list) or not terms:
        raise MethodSpecError(f"{where}: expected a non-empty list of terms such as {{weight: 0.05, kl: k3}}")
    built = []
    for index, term in enumerate(terms):
        at = f"{where}[{index}]"
        if not isinstance(term, dict):
            raise MethodSpecError(f"{at}: expected a mapping such as {{weight: 1.0, name: sft}}, got {term!r}")
        term = dict(term)
        weight = term.pop("weight", 1.0)
        name = term.pop("term_name", term.get("name", "kl" if "kl" in term else f"term{index}"))
        objective = build_objective(term, at)
        built.append(_construct(Term, {"weight": weight, "objective": objective, "name": str(name)}, at))
    return Sum(tuple(built))


def build_objective(spec: dict, where: str = "method"):
    """The objective a config's ``method`` mapping describes."""
    if not isinstance(spec, dict):
        raise MethodSpecError(f"{where}: expected a mapping")
    forms = [key for key in ("name", "parts", "sum", "kl") if key in spec]
    if len(forms) != 1:
        raise MethodSpecError(f"{where}: give exactly one of name (a registered method), parts, sum or kl")
    form = forms[0]
    if form == "name":
        return _named(spec, where)
    extra = sorted(map(str, set(spec) - {form}))
    if extra:
        raise MethodSpecError(f"{where}: unknown key(s) {', '.join(extra)} beside {form} (parameters go inside its parts)")
    if form == "parts":
        return build_estimator(spec["parts"], f"{where}.parts")
    if form == "kl":
        return _kl(spec["kl"], where)
    return _sum(spec["sum"], f"{where}.sum")
