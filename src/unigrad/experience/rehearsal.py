"""DPH-RL's rehearsal set: samples of the initial policy kept beside the rollouts (Li et al. 2025,
"The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in RLVR", arXiv 2509.07430).

Before the first step the initial policy π_ref samples k = ``rehearsal.samples`` completions of every
training prompt (the run's rollout settings) and the reward scores them. Prompts with all k correct
form D_pef: their k samples are stored with log π_ref of every token — the sampler's temperature-1
log-probs of the tokens it drew, so no reference model is held or run. The other prompts form D_exp.

Each step then holds the rollouts of the step's D_exp prompts (the run's ``RolloutSource``, restricted
to D_exp) and ``rehearsal.per_step`` stored samples, drawn in seeded laps over the stored set, as rows
with ``extra["is_rehearsal"]`` and their stored log-probs in ``extra["logp_rehearsal"]`` ([N, T], 0 on
rollout rows). A stored sample's group is its prompt's (after the D_exp prompts' groups), its reward 1.

The set is written to ``folder/rehearsal.safetensors`` and ``folder/rehearsal.json`` (atomically, with a
fingerprint of the weights it was sampled from). A resumed run — whose weights are no longer π_ref —
reads it back; a run at step 0 reads it back only if it was made from the weights it has now, and
makes it again otherwise.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unigrad.experience.base import Experience
from unigrad.experience import stored
from unigrad.experience.iterations import weights_fingerprint
from unigrad.experience.rollouts import RolloutSource
from unigrad.tokens import Sequence

FLAG, LOGPROBS = "is_rehearsal", "logp_rehearsal"
FIELDS = frozenset({FLAG, LOGPROBS})
ROWS_PER_CALL = 64          # rows the pre-sampling decodes at once (its KV cache)
STEP_FIELDS = ("train_step", "train_steps")
SAMPLER_LOGPROBS = ("logp_old", "logp_sampler")   # rollout fields that, for a stored row, are its log π_ref


@dataclass
class RehearsalSet:
    """The pre-sampling's result: D_exp and D_pef as prompt indices, D_pef's stored samples (each with
    the index of its prompt in ``pef``) and their log π_ref ([N, T], 0 past a sample's end)."""
    exp: list[int]
    pef: list[int]
    samples: list[Sequence]
    prompt_of: list[int]
    logp: torch.Tensor
    metrics: dict = field(default_factory=dict)


def split(correct: torch.Tensor) -> tuple[list[int], list[int]]:
    """(D_exp, D_pef) prompt indices from [P, k] correctness: D_pef has all k correct."""
    solved = correct.bool().all(dim=1)
    return [i for i in range(len(solved)) if not solved[i]], [i for i in range(len(solved)) if solved[i]]


def rows_of_step(n: int, per_step: int, step: int, seed: int) -> list[int]:
    """The stored samples of step ``step``: positions step·m … step·m + m − 1 (m = min(per_step, n)) of
    seeded laps over the n samples, each lap a fresh permutation (so every sample recurs once a lap)."""
    m = min(per_step, n)
    if m == 0:
        return []
    first, last = step * m, (step + 1) * m
    out, lap = [], first // n
    while len(out) < m:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 104_729 * lap + 17))
        start = max(first - lap * n, 0)
        out += order[start:min(last - lap * n, n)].tolist()
        lap += 1
    return out


def _pad(values: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(values, (0, width - values.shape[1])) if values.shape[1] < width else values[:, :width]


@dataclass
class Rehearsal:
    """The experience producer around ``source`` (module docstring). ``policy``: the model whose
    weights π_ref are (fingerprinted); ``write``: this process writes the files (the main one)."""
    source: RolloutSource
    samples: int                     # k
    per_step: int
    policy: object
    folder: Path
    write: bool = True
    _made: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return self.source.epochs

    @property
    def provides(self) -> frozenset[str]:
        return self.source.provides | FIELDS

    def after_update(self) -> None:
        self.source.after_update()

    def __call__(self, step: int) -> Experience:
        data = self.rehearsal(at_start=step == 0)
        experience = self._explore(data)(step)
        picked = rows_of_step(len(data.samples), self.per_step, step, self.source.seed)
        return self._with_rehearsal(experience, data, picked, len(data.exp))

    # ---------------------------------------------------------------------------- the step's rows

    def _explore(self, data: RehearsalSet) -> RolloutSource:
        """The run's rollouts, restricted to the D_exp prompts."""
        if "explore" not in self._made:
            if not data.exp:
                raise RuntimeError("rehearsal: the initial policy solved every training prompt in all "
                                   f"{self.samples} samples, so no prompt is left to explore; use harder prompts")
            s = self.source
            demos = [s.demonstrations[i] for i in data.exp] if s.demonstrations is not None else None
            self._made["explore"] = dataclasses.replace(s, examples=[s.examples[i] for i in data.exp],
                                                        batch_size=min(s.batch_size, len(data.exp)),
                                                        demonstrations=demos)
        return self._made["explore"]

    @staticmethod
    def _with_rehearsal(experience: Experience, data: RehearsalSet, picked: list[int], offset: int) -> Experience:
        """``experience`` with the stored samples ``picked`` appended, one unit each."""
        n_exp = len(experience.sequences)
        rehearsed = [Sequence(data.samples[i].prompt_ids, data.samples[i].completion_ids, group=offset + data.prompt_of[i])
                     for i in picked]
        sequences = experience.sequences + rehearsed
        width = max(len(s.completion_ids) for s in sequences)
        ref = torch.zeros(len(sequences), width)
        if picked:
            ref[n_exp:] = _pad(data.logp[picked], width)
        fields = {}
        for name, values in experience.fields.items():
            if name in STEP_FIELDS:     # the step's place in the run, the same on every row
                fill = values[:1].expand(len(picked)) if len(values) else torch.zeros(len(picked), dtype=values.dtype)
            elif values.dim() == 1:     # per-row data: a stored sample is correct (reward 1), not a demonstration
                fill = (torch.ones if name == "reward" else torch.zeros)(len(picked), dtype=values.dtype)
            else:                       # [N, T] data: π_ref sampled the stored rows (their behaviour policy)
                fill = (ref[n_exp:].to(values.dtype) if name in SAMPLER_LOGPROBS
                        else torch.zeros(len(picked), width, dtype=values.dtype))
                values = _pad(values, width)
            fields[name] = torch.cat([values, fill])
        fields[FLAG] = torch.cat([torch.zeros(n_exp, dtype=torch.bool), torch.ones(len(picked), dtype=torch.bool)])
        fields[LOGPROBS] = ref
        changes = {"sequences": sequences, "units": experience.units + [[n_exp + j] for j in range(len(picked))],
                   "fields": fields, "metrics": {**experience.metrics, "rehearsal_rows": float(len(picked)), **data.metrics}}
        changes["again"] = None     # a redraw of the rollouts alone would drop the stored rows
        return dataclasses.replace(experience, **changes)

    # ---------------------------------------------------------------------------- the pre-sampling

    def rehearsal(self, at_start: bool) -> RehearsalSet:
        """The set: made now, or read back — at step 0 only if it was made from the weights the policy
        has now; on a resumed run always (it cannot be made again from weights no longer π_ref)."""
        if "set" not in self._made:
            saved = self._load(at_start)
            if saved is None and not at_start:
                raise RuntimeError(f"rehearsal: {self._paths()[1]} is missing or was made for other prompts or "
                                   "another rehearsal.samples; a resumed run cannot sample it again from the initial "
                                   "policy. Start the run again from step 0")
            self._made["set"] = saved if saved is not None else self._make()
        return self._made["set"]

    def _make(self) -> RehearsalSet:
        s, k = self.source, self.samples
        s.sync()
        r = s.rollout
        per_call = max(1, ROWS_PER_CALL // k)
        from unigrad.rewards import score_rollouts
        correct, sequences, logps = [], [], []
        for call, start in enumerate(range(0, len(s.examples), per_call)):
            chosen = s.examples[start:start + per_call]
            rollouts = s.sampler.sample([list(e.prompt_ids) for e in chosen], k, r.max_new_tokens,
                                        temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                        seed=(s.seed * 1_000_003 + call) * 13 + 3)
            rewards, _ = score_rollouts(s.reward_fn, [e.prompt_text for e in chosen], rollouts.texts(s.tokenizer),
                                        [e.answer for e in chosen], fallback=s.fallback, metas=[e.extra for e in chosen])
            correct.append((rewards > 0.5).reshape(len(chosen), k))
            sequences += rollouts.sequences()
            logps += [rollouts.logp_policy[i, :len(q.completion_ids)] for i, q in enumerate(rollouts.sequences())]
        correct = torch.cat(correct)
        exp, pef = split(correct)
        rows = [p * k + j for p in pef for j in range(k)]
        width = max([len(sequences[i].completion_ids) for i in rows] + [1])
        logp = torch.zeros(len(rows), width)
        for n, i in enumerate(rows):
            logp[n, :logps[i].numel()] = logps[i].float()
        data = RehearsalSet(exp, pef, [Sequence(sequences[i].prompt_ids, sequences[i].completion_ids) for i in rows],
                            [n // k for n in range(len(rows))], logp,
                            {"rehearsal_prompts": float(len(pef)), "exploration_prompts": float(len(exp)),
                             "presample_accuracy": float(correct.float().mean())})
        if self.write:
            self._save(data)
        return data

    # ---------------------------------------------------------------------------- persistence

    def _paths(self) -> tuple[Path, Path]:
        return self.folder / "rehearsal.safetensors", self.folder / "rehearsal.json"

    def _save(self, data: RehearsalSet) -> None:
        tensors = {"logp": data.logp, "prompt_of": torch.tensor(data.prompt_of, dtype=torch.long),
                   **stored.sequence_tensors(data.samples)}
        meta = {"samples": self.samples, "prompts": len(self.source.examples), "exp": data.exp, "pef": data.pef,
                "fingerprint": weights_fingerprint(self.policy), "metrics": data.metrics}
        stored.write(*self._paths(), tensors, meta)

    def _load(self, at_start: bool) -> RehearsalSet | None:
        found = stored.read(*self._paths())
        if found is None:
            return None
        x, meta = found
        if meta["samples"] != self.samples or meta["prompts"] != len(self.source.examples):
            return None
        if at_start and meta["fingerprint"] != weights_fingerprint(self.policy):
            return None
        return RehearsalSet(meta["exp"], meta["pef"], stored.sequences_of(x), x["prompt_of"].tolist(), x["logp"],
                            meta["metrics"])

def fields_for(objective, online: bool) -> frozenset[str]:
    """What the rehearsal adds to a run whose objective reads its rows (none otherwise)."""
    if FLAG not in objective.requires:
        return frozenset()
    if not online:
        from unigrad.config import ConfigError
        raise ConfigError("method: this objective trains on a rehearsal set sampled from the initial policy beside "
                          "its rollouts; set data.format: prompts (a built-in data.task or prompt files)")
    return FIELDS


def around(source, objective, settings, policy, folder: Path, write: bool):
    """``source`` wrapped in a ``Rehearsal`` when the objective reads rehearsal rows, else ``source``."""
    if FLAG not in objective.requires:
        return source
    return Rehearsal(source, settings.samples, settings.per_step, policy, folder, write)


__all__ = ["FIELDS", "FLAG", "LOGPROBS", "Rehearsal", "RehearsalSet", "around", "fields_for", "rows_of_step", "split"]
