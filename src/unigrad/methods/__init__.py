"""The method registry: names → factories. It exists only for the command line and configs;
in code a method is just the value its factory returns."""
from __future__ import annotations

import inspect

from unigrad.estimator import Estimator
from unigrad.objectives import Gate, Sum
from unigrad.objectives.route import Route
from unigrad.methods.preference import cpo, dpo, f_dpo, ipo, online_dpo, orpo, sft, simpo
from unigrad.methods.unpaired import bco, kto
from unigrad.methods.offline import a_lol, a_lol_kl, a_lol_ref_free, a_lol_seq, asft, ddo
from unigrad.methods.unlearning import flat, ga, grad_diff, ihl, npo, safe_align
from unigrad.methods.rl import cispo, dapo, dr_grpo, grpo, gspo, hpt, reinforce, reinforce_pp, rloo, sapo
from unigrad.methods.distill import bd_kd, kd_forward, kd_js, kd_reverse, pld, sinkd
from unigrad.methods.nash import dno, nash_md, nash_mp, sppo
from unigrad.methods.reward_model import reward_model
from unigrad.methods.latent import trice
from unigrad.methods.ppo import ppo
from unigrad.methods.dph import dph_rl
from unigrad.methods.rl_variants import asymre, copo, f_dpg, mdpo, opmd

REGISTRY = {
    "sft": sft,
    "dpo": dpo,
    "online-dpo": online_dpo,
    "ipo": ipo,
    "simpo": simpo,
    "orpo": orpo,
    "f-dpo": f_dpo,
    "cpo": cpo,
    "kto": kto,
    "bco": bco,
    "ga": ga,
    "grad-diff": grad_diff,
    "npo": npo,
    "ihl": ihl,
    "flat": flat,
    "safe-align": safe_align,
    "asft": asft,
    "ddo": ddo,
    "a-lol": a_lol,
    "a-lol-ref-free": a_lol_ref_free,
    "a-lol-seq": a_lol_seq,
    "a-lol-kl": a_lol_kl,
    "grpo": grpo,
    "dr-grpo": dr_grpo,
    "dapo": dapo,
    "gspo": gspo,
    "rloo": rloo,
    "reinforce": reinforce,
    "reinforce++": reinforce_pp,
    "hpt": hpt,
    "cispo": cispo,
    "sapo": sapo,
    "ppo": ppo,
    "dph-rl": dph_rl,
    "opmd": opmd,
    "asymre": asymre,
    "mdpo": mdpo,
    "copo": copo,
    "f-dpg": f_dpg,
    "kd-forward": kd_forward,
    "kd-reverse": kd_reverse,
    "kd-js": kd_js,
    "bd-kd": bd_kd,
    "sinkd": sinkd,
    "pld": pld,
    "nash-md": nash_md,
    "dno": dno,
    "nash-mp": nash_mp,
    "sppo": sppo,
    "reward-model": reward_model,
    "trice": trice,
}


# Parameters that left a method's loss for the run config: passing one is an error saying where it went.
MOVED = {
    ("kd-js", "lam"): "GKD's on-policy fraction λ is not a loss parameter; set the config key "
                      "`data.on_policy_fraction` instead",
}


def methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(REGISTRY)


def method(name: str, **params):
    """The objective of method ``name`` with ``params`` (its paper's symbols, spelled out). Each factory
    checks its parameters' domains (``unigrad.estimator.checks``): a value outside raises ``ParameterError``."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(methods())}")
    for key in params:
        if (name, key) in MOVED:
            raise ValueError(f"method {name!r}: parameter {key!r} was removed: {MOVED[name, key]}")
    factory = REGISTRY[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters are: {signature(name)}")
    return factory(**params)


def signature(name: str) -> str:
    return ", ".join(f"{p.name}={p.default!r}" for p in inspect.signature(REGISTRY[name]).parameters.values())


def describe(objective, indent: str = "  ") -> str:
    """The four parts of an objective, one per line (terms of a sum indented under their weight)."""
    if isinstance(objective, Sum):
        return "\n".join(f"{indent}{term.weight:g} × {term.name}:\n{describe(term.objective, indent + '    ')}"
                         for term in objective.terms)
    if isinstance(objective, Gate):                                     # one objective per route
        return (f"{indent}per prompt, success rate ≤ {objective.gamma:g} → below, else above\n"
                f"{indent}below:\n{describe(objective.below, indent + '    ')}\n"
                f"{indent}above:\n{describe(objective.above, indent + '    ')}")
    if isinstance(objective, Route):                                    # rows routed by a flag the data carry
        marked, other = objective.names
        return (f"{indent}rows with {objective.field} → {marked}, the others → {other}\n"
                f"{indent}{marked}:\n{describe(objective.marked, indent + '    ')}\n"
                f"{indent}{other}:\n{describe(objective.other, indent + '    ')}")
    inner = getattr(objective, "objective", None)
    if inner is not None and not isinstance(objective, Estimator):      # a wrapper: what it asks, then its parts
        asks = {"update_rule": "update rule", "experience": "trains on", "value_loss": "critic"}
        said = [f"{label}: {getattr(objective, key)}" for key, label in asks.items() if hasattr(objective, key)]
        return f"{indent}{type(objective).__name__}({', '.join(said)})\n{describe(inner, indent)}"
    if not isinstance(objective, Estimator):
        return f"{indent}{objective!r}"
    return "\n".join(f"{indent}{part:<12} {getattr(objective, part)!r}"
                     for part in ("mask", "denominator", "advantage", "likelihood"))
