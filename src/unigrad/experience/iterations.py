"""Batched on-policy iterations of preference pairs: Direct Nash Optimization's data (Rosset et al. 2024,
"Direct Nash Optimization: Teaching Language Models to Self-Improve with General Preferences",
arXiv 2404.03715, Algorithm 2, DNO-Prct).

Iteration t (optimiser steps t·S … t·S + S − 1, S = ``iterations.steps``) starts from the policy π_t
as it is at step t·S:

1. sample K responses per prompt from π_t (``rollout`` settings), plus the prompt's gold response (its
   demonstration) with ``iterations.gold``;
2. score every candidate by its win rate against the prompt's other candidates under the preference
   model, s_i = (1/(m−1)) Σ_{j≠i} P(y_i ≻ y_j);
3. pair by the margin rule: a positive scores at least ``min_score`` (null: the prompt's best score),
   a negative at least ``margin`` below it; all such pairs;
4. add a share ``carry[j−1]`` of iteration t−j's new pairs (the paper: ≤ 30 % of t−1's, ≤ 15 % of t−2's);
5. fix the reference of the iteration: log π_t of every pair's tokens, computed now, so the DPO loss
   of the iteration, −log σ(η [log π_θ/π_t (y⁺) − log π_θ/π_t (y⁻)]), is against π_t — no frozen
   reference model is held.

Its S steps then serve the iteration's pairs in a seeded order (an epoch is ⌈pairs / batch⌉ steps).

The ``samples`` shape (the objective reads ``win_rate``: SPPO, Wu et al. 2024, "Self-Play Preference
Optimization for Language Model Alignment", arXiv 2405.00675, Algorithm 1) skips steps 3–4: every
candidate is a row of its own with its win rate s_i ≈ P(y_i ≻ π_t) (``extra["win_rate"]``) and its
log-probs under π_t, served batch_size rows per step.
Each iteration's pairs and reference log-probs are written to ``folder/iteration-TTTT`` (safetensors
and JSON, atomically) with a fingerprint of the weights they were made from, so a run resumed in the
middle of an iteration — when the weights are no longer π_t — serves the same pairs against the same
reference, and one resumed at a boundary regenerates them from the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from unigrad.experience import stored
from unigrad.experience.base import Experience
from unigrad.tokens import Sequence


@dataclass
class IterationData:
    """One iteration's pairs: chosen and rejected sequences, their reference log-probs under π_t
    (each [N, T], 0 past a sequence's end), how many are new (the rest are carried over), metrics."""
    chosen: list[Sequence]
    rejected: list[Sequence]
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    new: int
    metrics: dict = field(default_factory=dict)
    scores: torch.Tensor | None = None   # the samples shape: the win rate of each ``chosen`` row ([N]); no rejected


def win_rates(prefer: Callable, prompts: list, candidates: list[list[str]], answers: list) -> torch.Tensor:
    """[P, m] s_i = mean over j ≠ i of P(y_i ≻ y_j), from one preference call per pair (i < j) of slots
    over all prompts at once (P(y_j ≻ y_i) = 1 − P(y_i ≻ y_j))."""
    m = len(candidates[0])
    wins = torch.zeros(len(prompts), m, dtype=torch.float64)
    for i in range(m):
        for j in range(i + 1, m):
            p = torch.as_tensor(prefer(prompts, [c[i] for c in candidates], [c[j] for c in candidates], answers),
                                dtype=torch.float64)
            wins[:, i] += p
            wins[:, j] += 1 - p
    return wins / max(m - 1, 1)


def margin_pairs(scores: torch.Tensor, margin: float, min_score: float | None) -> list[tuple[int, int]]:
    """(positive, negative) candidates of one prompt: the positive scores at least ``min_score`` (None:
    the best score), the negative at least ``margin`` below it (and strictly below)."""
    floor = float(scores.max()) if min_score is None else min_score
    pairs = []
    for i, si in enumerate(scores.tolist()):
        if si < floor - 1e-6:
            continue
        pairs += [(i, j) for j, sj in enumerate(scores.tolist()) if j != i and sj <= si - margin and sj < si]
    return pairs


def weights_fingerprint(model) -> list[float]:
    """Σ θ and Σ θ² over the trainable parameters (float64): what a saved iteration is checked against."""
    total, squares = 0.0, 0.0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                q = p.detach().double()
                total += float(q.sum())
                squares += float((q * q).sum())
    return [total, squares]


@dataclass
class IterationPairs:
    """The experience producer of DNO's iterations (module docstring). ``prefer(prompts, a, b, answers)``
    → P(a ≻ b); ``reference_logprobs(sequences)`` → [N, T] log π of their completion tokens under the
    policy as it is now; ``gold``: each example's demonstration row (or None)."""
    examples: list
    sampler: object
    prefer: Callable
    reference_logprobs: Callable
    rollout: object                  # RolloutConfig: samples are drawn with its temperature, top-p, top-k, length
    settings: object                 # IterationsConfig
    tokenizer: object
    batch_size: int
    policy: object                   # the model whose weights π_t are (fingerprinted)
    folder: Path
    gold: list | None = None
    seed: int = 0
    write: bool = True               # this process writes the iteration files (the main one)
    sync: Callable[[], None] = lambda: None
    epochs: int = 1
    shape: Literal["pairs", "samples"] = "pairs"
    _done: dict = field(default_factory=dict)

    @staticmethod
    def fields(shape: str) -> frozenset[str]:
        """What the iterations fill: pairs (groups, signs) or scored samples, each against π_t's log-probs."""
        return frozenset({"group", "sign", "logp_ref"} if shape == "pairs" else {"group", "win_rate", "logp_ref"})

    @property
    def provides(self) -> frozenset[str]:
        return self.fields(self.shape)

    def __call__(self, step: int) -> Experience:
        t, position = divmod(step, self.settings.steps)
        data = self.iteration(t, at_start=position == 0)
        n = len(data.chosen)
        if n == 0:
            raise RuntimeError(f"DNO iteration {t}: the margin rule found no pair among the samples (every "
                               "candidate of every prompt scored alike); lower iterations.margin or sample more")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * t + 1)
        laps = (position + 1) * self.batch_size // n + 1
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(laps)])
        chosen = order[position * self.batch_size:(position + 1) * self.batch_size].tolist()
        metrics = {"iteration": float(t), **{f"iteration_{k}": v for k, v in data.metrics.items()}}
        if self.shape == "samples":
            return self._samples(data, chosen, metrics)
        sequences, units = [], []
        for k, i in enumerate(chosen):
            units.append([2 * k, 2 * k + 1])
            sequences += [Sequence(data.chosen[i].prompt_ids, data.chosen[i].completion_ids, group=k, sign=1.0),
                          Sequence(data.rejected[i].prompt_ids, data.rejected[i].completion_ids, group=k, sign=-1.0)]
        width = max(len(s.completion_ids) for s in sequences)
        ref = torch.zeros(len(sequences), width)
        for k, i in enumerate(chosen):
            ref[2 * k, :data.ref_chosen.shape[1]] = data.ref_chosen[i, :width]
            ref[2 * k + 1, :data.ref_rejected.shape[1]] = data.ref_rejected[i, :width]
        return Experience(sequences, units, {"logp_ref": ref}, None, metrics)

    @staticmethod
    def _samples(data: IterationData, chosen: list[int], metrics: dict) -> Experience:
        sequences = [Sequence(data.chosen[i].prompt_ids, data.chosen[i].completion_ids, group=k)
                     for k, i in enumerate(chosen)]
        width = max(len(s.completion_ids) for s in sequences)
        ref = torch.zeros(len(sequences), width)
        ref[:, :min(width, data.ref_chosen.shape[1])] = data.ref_chosen[chosen, :width]
        return Experience(sequences, [[k] for k in range(len(chosen))],
                          {"logp_ref": ref, "win_rate": data.scores[chosen].float()}, None, metrics)

    def after_update(self) -> None:
        self.sync()

    # ------------------------------------------------------------------------------- one iteration

    def iteration(self, t: int, at_start: bool = False) -> IterationData:
        """Iteration t's pairs: made now, or read back — at the iteration's first step only if they were
        made from the weights the policy has now (else they belong to another run and are made again)."""
        if t not in self._done:
            saved = self._load(t, at_start)
            self._done[t] = saved if saved is not None else self._make(t)
        return self._done[t]

    def _prompts(self, t: int) -> list[int]:
        count = self.settings.prompts or len(self.examples)
        order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + t))
        return order[:min(count, len(self.examples))].tolist()

    def _make(self, t: int) -> IterationData:
        self.sync()
        chosen_prompts = self._prompts(t)
        examples = [self.examples[u] for u in chosen_prompts]
        r, K = self.rollout, self.settings.samples
        rollouts = self.sampler.sample([list(e.prompt_ids) for e in examples], K, r.max_new_tokens,
                                       temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                       seed=(self.seed * 1_000_003 + t) * 11 + 5)
        texts, samples = rollouts.texts(self.tokenizer), rollouts.sequences()
        candidates = [[texts[p * K + k] for k in range(K)] for p in range(len(examples))]
        rows = [[samples[p * K + k] for k in range(K)] for p in range(len(examples))]
        if self.settings.gold:
            for p, u in enumerate(chosen_prompts):
                candidates[p].append(self.examples[u].demonstration or "")
                rows[p].append(self.gold[u])
        scores = win_rates(self.prefer, [e.prompt_text for e in examples], candidates, [e.answer for e in examples])
        if self.shape == "samples":
            return self._scored_samples(t, [row for prompt in rows for row in prompt], scores)
        new = [(rows[p][i], rows[p][j]) for p in range(len(examples))
               for i, j in margin_pairs(scores[p], self.settings.margin, self.settings.min_score)]
        carried = self._carried(t)
        pairs = new + carried
        ref_chosen = self.reference_logprobs([c for c, _ in pairs]) if pairs else torch.zeros(0, 1)
        ref_rejected = self.reference_logprobs([r_ for _, r_ in pairs]) if pairs else torch.zeros(0, 1)
        metrics = {"pairs": float(len(pairs)), "new_pairs": float(len(new)), "carried_pairs": float(len(carried)),
                   "best_score": float(scores.max(1).values.mean()), "score_mean": float(scores.mean()),
                   "prompts_without_pair": float(sum(not margin_pairs(s, self.settings.margin, self.settings.min_score)
                                                     for s in scores))}
        data = IterationData([c for c, _ in pairs], [r_ for _, r_ in pairs], ref_chosen, ref_rejected, len(new),
                             metrics)
        if self.write:
            self._save(t, data)
        return data

    def _scored_samples(self, t: int, rows: list[Sequence], scores: torch.Tensor) -> IterationData:
        """Every candidate with its win rate, against π_t (SPPO's iteration data; nothing carried over)."""
        data = IterationData(rows, [], self.reference_logprobs(rows), torch.zeros(0, 1), len(rows),
                             {"samples": float(len(rows)), "score_mean": float(scores.mean()),
                              "best_score": float(scores.max(1).values.mean())}, scores.reshape(-1).float())
        if self.write:
            self._save(t, data)
        return data

    def _carried(self, t: int) -> list[tuple[Sequence, Sequence]]:
        """A seeded share ``carry[j−1]`` of iteration t−j's new pairs, j = 1, 2, …"""
        out = []
        for j, share in enumerate(self.settings.carry, start=1):
            if t - j < 0 or share <= 0:
                continue
            earlier = self.iteration(t - j)
            take = int(share * earlier.new)
            order = torch.randperm(earlier.new, generator=torch.Generator().manual_seed(self.seed * 7 + 31 * t + j))
            out += [(earlier.chosen[i], earlier.rejected[i]) for i in order[:take].tolist()]
        return out

    # ------------------------------------------------------------------------------ persistence

    def _paths(self, t: int) -> tuple[Path, Path]:
        return self.folder / f"iteration-{t:04d}.safetensors", self.folder / f"iteration-{t:04d}.json"

    def _save(self, t: int, data: IterationData) -> None:
        rows = data.chosen + data.rejected
        tensors = {"ref_chosen": data.ref_chosen, "ref_rejected": data.ref_rejected, **stored.sequence_tensors(rows)}
        if data.scores is not None:
            tensors["scores"] = data.scores
        meta = {"iteration": t, "fingerprint": weights_fingerprint(self.policy), "new": data.new,
                "pairs": len(data.chosen), "metrics": data.metrics}
        stored.write(*self._paths(t), tensors, meta)

    def _load(self, t: int, at_start: bool) -> IterationData | None:
        found = stored.read(*self._paths(t))
        if found is None:
            return None
        x, meta = found
        if at_start and meta["fingerprint"] != weights_fingerprint(self.policy):
            return None
        rows, n = stored.sequences_of(x), meta["pairs"]
        return IterationData(rows[:n], rows[n:], x["ref_chosen"], x["ref_rejected"], meta["new"], meta["metrics"],
                             x.get("scores"))
