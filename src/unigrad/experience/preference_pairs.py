"""On-policy preference experience: samples from the current policy, compared by a preference model.

Two shapes, chosen by what the objective reads (``emits_for``):

- ``pairs`` (the objective reads ``group`` and ``sign``: DPO and its family): per prompt two samples y, y′ of the
  policy (or y of the policy and y′ of ``opponent``), P = P(y ≻ y′ | x) from the preference model, and
  one pair unit: chosen = y if P > ½, else y′ (group = the prompt's index, sign +1 chosen / −1
  rejected) — the Batch fields the offline ``pairs`` format gives, so the offline objective is used
  unchanged (online DPO: Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback").
  A pair with P = ½ (a tie: both right or both wrong under a rule) says nothing about which is better:
  ``ties="drop"`` leaves it out and ``ties="keep"`` trains it in the sampled order (TRL's choice). A step
  whose pairs all tie, with ``drop``, has nothing to learn: it trains its first prompt's first sample against
  itself (y_w = y_l, so h(y_w) − h(y_l) = 0 and the DPO gradient ±β σ(0) ∇ℓ(y) cancels: no gradient).
- ``preference`` (the objective reads ``extra["preference"]``: Nash-MD): ``num_generations`` samples y_j
  per prompt, each with its own opponent sample y′_j (from ``opponent``, by default the policy itself,
  sampled again), one unit per prompt, and ``extra["preference"]`` = P(y_j ≻ y′_j).

With an ``anchor`` (the objective reads ``logp_anchor``: Nash-MP) the rows also carry log π_k(y), π_k the
policy at the start of the step, and the step's experience can be drawn again at the current weights
(``Experience.again``): extragradient's evaluation at the half point plays π_{k+½} against itself.

The sampler's log-probs of the policy's tokens are the behaviour log-probs (``logp_old``). Samples are
seeded by (seed, step), so a resumed run draws the same ones. Metrics: ``preference/queries`` (pairs the
preference model compared), ``preference/chosen_mean`` (mean P(chosen ≻ rejected) over the kept pairs),
``preference/ties``, ``preference/dropped``, ``preference/mean`` (mean P(y ≻ y′), preference shape) and
``entropy`` (the policy samples' mean per-token entropy, where the sampler gives it: ``rollout.base``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from unigrad.experience.base import Experience
from unigrad.experience.dataset import step_units
from unigrad.tokens import Sequence

Emit = Literal["pairs", "preference"]


def emits_for(requires: frozenset[str]) -> Emit | None:
    """The shape an online objective needs: pairs when it reads ``group`` and ``sign`` (chosen against rejected
    in each pair), P(y ≻ y′) per sample when it reads ``preference``; None when it needs neither (rollouts
    scored by a reward; forget/retain signs without pairs are not preferences)."""
    if {"group", "sign"} <= requires:
        return "pairs"
    if "preference" in requires:
        return "preference"
    return None


def fields(emit: Emit) -> frozenset[str]:
    """What each shape fills: pair groups and signs, or prompt groups and the preference."""
    return frozenset({"group", "sign", "logp_old"} if emit == "pairs" else {"group", "preference", "logp_old"})


@dataclass
class PreferencePairs:
    """Step ``s``'s prompts ``step_units(len(examples), batch_size, s, seed)``, sampled and compared (module
    docstring). ``sampler`` and ``opponent`` follow ``rollout.base.Sampler``; ``preference`` the protocol of
    ``rewards.preferences``; ``rollout`` a RolloutConfig (how to sample)."""
    examples: list                   # PromptExample with prompt_ids
    sampler: object
    preference: Callable
    rollout: object
    tokenizer: object
    batch_size: int
    emit: Emit = "pairs"
    opponent: object | None = None   # a Sampler for y′; None: the policy's sampler
    ties: Literal["drop", "keep"] = "drop"
    seed: int = 0
    sync: Callable[[], None] = lambda: None   # hands the updated policy to the sampler
    anchor: object | None = None              # reference.Anchor: log π_k of the update's start (Nash-MP)
    policy: object | None = None              # what the anchor holds at the start of each step

    @property
    def epochs(self) -> int:
        return self.rollout.epochs

    @property
    def provides(self) -> frozenset[str]:
        return fields(self.emit) | ({"logp_anchor"} if self.anchor is not None else set())

    def after_update(self) -> None:
        self.sync()

    def _draw(self, sampler, prompts: list[list[int]], n: int, seed: int):
        r = self.rollout
        return sampler.sample(prompts, n, r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              seed=seed)

    def samples(self, chosen: list, n: int, step: int, draw: int = 0):
        """(policy rollouts, opponent rollouts), ``n`` rows of each per prompt, row i·n + j against row i·n + j;
        ``draw`` counts the step's draws (a later one is made at the weights the policy has then)."""
        prompts = [list(e.prompt_ids) for e in chosen]
        seed = (self.seed * 1_000_003 + step) * 7 + 2 * draw
        if self.opponent is None and self.emit == "pairs":     # two samples of the policy per prompt
            both = self._draw(self.sampler, prompts, 2 * n, seed)
            first = [i * 2 * n + j for i in range(len(chosen)) for j in range(n)]
            return _rows(both, first, n), _rows(both, [r + n for r in first], n)
        opponent = self.sampler if self.opponent is None else self.opponent
        return self._draw(self.sampler, prompts, n, seed), self._draw(opponent, prompts, n, seed + 1)

    def __call__(self, step: int) -> Experience:
        """Step ``step``'s experience; with an anchor, it first holds the policy's weights (π_k) and the
        experience can be drawn again later in the step (``Experience.again``, at π_{k+½})."""
        if self.anchor is not None:
            self.anchor.hold(self.policy)
        return self.draw(step, 0)

    def draw(self, step: int, draw: int) -> Experience:
        units = step_units(len(self.examples), self.batch_size, step, self.seed)
        chosen = [self.examples[u] for u in units]
        n = 1 if self.emit == "pairs" else self.rollout.num_generations
        if draw:
            self.sync()                                       # the sampler samples the weights as they are now
        policy, opponent = self.samples(chosen, n, step, draw)
        texts_a, texts_b = policy.texts(self.tokenizer), opponent.texts(self.tokenizer)
        p = self.preference([e.prompt_text for e in chosen for _ in range(n)], texts_a, texts_b,
                            [e.answer for e in chosen for _ in range(n)])
        p = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
        if p.shape[0] != len(texts_a) or not bool(torch.all((p >= 0) & (p <= 1))):
            raise ValueError(f"the preference model returned {p.tolist()} for {len(texts_a)} pairs; "
                             "it must give one P(a ≻ b) in [0, 1] per pair")
        metrics = {"preference/queries": float(len(p)), "preference/ties": float((p == 0.5).sum()),
                   "completion_length": float(policy.lengths.float().mean()), **policy.entropy_metrics()}
        made = self._pairs(units, policy, opponent, p, metrics) if self.emit == "pairs" else \
            self._preferences(units, policy, p, n, metrics)
        if self.anchor is not None:
            made.fields["logp_anchor"] = self.anchor(made.sequences)
            made.again = lambda: self.draw(step, draw + 1)
        return made

    def _pairs(self, units, policy, opponent, p, metrics) -> Experience:
        tie = p == 0.5
        keep = [i for i in range(len(units)) if not (self.ties == "drop" and bool(tie[i]))]
        a_rows, b_rows = policy.sequences(), opponent.sequences()
        nothing = not keep                                    # every pair tied: y against itself, no gradient
        if nothing:
            keep, b_rows, opponent = [0], a_rows, policy
        sequences, grouped, old = [], [], []
        for i in keep:
            a_first = bool(p[i] >= 0.5)                       # a tie kept: the sampled order
            for sample, rollouts, row, sign in ((a_rows[i], policy, i, 1.0 if a_first else -1.0),
                                                (b_rows[i], opponent, i, -1.0 if a_first else 1.0)):
                sequences.append(Sequence(sample.prompt_ids, sample.completion_ids, group=units[i], sign=sign,
                                          meta=sample.meta))
                old.append(rollouts.logp_policy[row, :len(sample.completion_ids)])
            grouped.append([len(sequences) - 2, len(sequences) - 1])
        kept = p[keep]
        metrics.update({"preference/chosen_mean": float(torch.maximum(kept, 1 - kept).mean()),
                        "preference/dropped": float(len(units) if nothing else len(units) - len(keep))})
        return Experience(sequences, grouped, {"logp_old": _padded(old)}, None, metrics)

    def _preferences(self, units, policy, p, n, metrics) -> Experience:
        sequences = [Sequence(s.prompt_ids, s.completion_ids, group=units[r // n], meta=s.meta)
                     for r, s in enumerate(policy.sequences())]
        grouped = [list(range(i * n, (i + 1) * n)) for i in range(len(units))]
        metrics["preference/mean"] = float(p.mean())
        old = [policy.logp_policy[r, :len(s.completion_ids)] for r, s in enumerate(sequences)]
        return Experience(sequences, grouped, {"logp_old": _padded(old), "preference": p.float()}, None, metrics)


def _rows(rollouts, rows: list[int], n: int):
    """The rollouts ``rows`` (prompt-major, ``n`` per prompt) as a Rollouts of their own."""
    from unigrad.rollout.base import Rollouts
    index = torch.tensor(rows, dtype=torch.long)
    width = max(max((len(rollouts.completion_ids[r]) for r in rows), default=1), 1)
    return Rollouts([rollouts.prompt_ids[r] for r in rows], [rollouts.completion_ids[r] for r in rows],
                    rollouts.logp_policy[index, :width], rollouts.logp_temperature[index, :width],
                    rollouts.logp_sample[index, :width], rollouts.mask[index, :width],
                    torch.arange(len(rows) // n).repeat_interleave(n), rollouts.finished[index], n, rollouts.sampling,
                    None if rollouts.entropy is None else rollouts.entropy[index, :width])


def _padded(rows: list) -> torch.Tensor:
    width = max(max((int(r.numel()) for r in rows), default=1), 1)
    out = torch.zeros(len(rows), width)
    for i, values in enumerate(rows):
        out[i, :values.numel()] = values
    return out


__all__ = ["PreferencePairs", "emits_for", "fields"]
