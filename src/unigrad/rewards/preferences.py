"""Preference models: P(y ≻ y′ | x) ∈ [0, 1] for a batch of pairs, behind one protocol.

    preference(prompts, completions_a, completions_b, answers=None) -> Tensor [n] (float64),
    entry p = P(a_p ≻ b_p | x_p), answers the task's reference answers (rules read them).

A preference model is what the on-policy preference methods ask (online DPO ranks its two samples,
Nash-MD weighs a sample against an opponent's). The kinds:

- ``RulePreference``: a rule over a reward, 1 if r(a) > r(b), 0 if r(a) < r(b), ½ on a tie — with a
  verifiable reward (``numeric_match``) a correct answer beats a wrong one;
- ``BradleyTerry`` (``unigrad.rewards.bradley_terry``): σ(r(a) − r(b)) from a reward model;
- ``PairwiseJudge``: a causal LM asked which of two answers is better, its "A"/"B" probabilities
  renormalised over the two tokens and averaged over both orders, P = ½[p_A(a, b) + p_B(b, a)]
  (position bias cancels, and P(b ≻ a) = 1 − P(a ≻ b) exactly);
- ``UserPreference``: a user's ``module:function`` (or ``file.py:function``) with the protocol's signature;
- ``Tabular``: an exact preference matrix over a finite set of responses (the tabular game).

``build_preference`` makes the run's preference model from the ``preference:`` config section; the
judge and the reward model are model roles (``unigrad.roles``), loaded, placed and held like the
reference.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

DTYPE = torch.float64

DEFAULT_TEMPLATE = (
    "Two assistants answered the same question. Decide which answer is better: correct first, then "
    "clear.\n\nQuestion:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
    "Which answer is better? Reply with the single letter A or B."
)
TEMPLATE_FIELDS = frozenset({"prompt", "a", "b"})


@runtime_checkable
class Preference(Protocol):
    def __call__(self, prompts: Sequence[Any], completions_a: Sequence[Any], completions_b: Sequence[Any],
                 answers: Sequence[Any] | None = None) -> Tensor:
        """P(a_p ≻ b_p | x_p) ∈ [0, 1] for each pair p: [n] float64."""


def checked(values, n: int, who: str) -> Tensor:
    """``values`` as [n] float64 probabilities, or a ValueError naming ``who`` and what is wrong."""
    p = torch.as_tensor(values, dtype=DTYPE).reshape(-1)
    if p.shape[0] != n:
        raise ValueError(f"{who}: returned {p.shape[0]} preferences for {n} pairs")
    if not bool(torch.all(torch.isfinite(p) & (p >= 0) & (p <= 1))):
        raise ValueError(f"{who}: preferences are probabilities P(a ≻ b) in [0, 1], got {p.tolist()}")
    return p


def _lengths(prompts, completions_a, completions_b) -> int:
    n = len(completions_a)
    if len(completions_b) != n or len(prompts) != n:
        raise ValueError(f"a preference compares pairs: {len(prompts)} prompts, {n} completions a, "
                         f"{len(completions_b)} completions b")
    return n


# ----------------------------------------------------------------------------------------- rule

@dataclass(frozen=True)
class RewardScores:
    """A per-sample reward function ``fn(prompt, completion, answer, **meta) -> float`` as a batch scorer
    ``(prompts, completions, answers) -> [n]``; a sample whose reward fails gets ``fallback``
    (``unigrad.rewards.score_rollouts``)."""
    reward_fn: Callable
    fallback: float = 0.0

    def __call__(self, prompts, completions, answers=None) -> Tensor:
        from unigrad.rewards.scoring import score_rollouts
        rewards, _ = score_rollouts(self.reward_fn, list(prompts), list(completions), answers, fallback=self.fallback)
        return rewards.to(DTYPE)


@dataclass(frozen=True)
class RulePreference:
    """The rule preference of a score r: P(a ≻ b) = 1[r(a) > r(b)] + ½ 1[r(a) = r(b)].

    ``score(prompts, completions[, answers]) -> [n]`` is a batch scorer (``answers`` passed only when
    given); ``RulePreference.of_reward(fn)`` makes one from any reward function — a verifiable rule
    such as ``numeric_match`` (1 correct, 0 wrong) gives 1, 0, or ½ when both are right or both wrong."""
    score: Callable

    @classmethod
    def of_reward(cls, reward_fn: Callable, fallback: float = 0.0) -> "RulePreference":
        return cls(RewardScores(reward_fn, fallback))

    def _scores(self, prompts, completions, answers) -> Tensor:
        values = self.score(prompts, completions) if answers is None else self.score(prompts, completions, answers)
        return torch.as_tensor(values, dtype=DTYPE).reshape(-1)

    def __call__(self, prompts, completions_a, completions_b, answers=None) -> Tensor:
        a, b = self._scores(prompts, completions_a, answers), self._scores(prompts, completions_b, answers)
        return (a > b).to(DTYPE) + 0.5 * (a == b).to(DTYPE)


# ---------------------------------------------------------------------------------------- judge

def check_template(template: str) -> str:
    """``template`` if its fields are exactly {prompt}, {a} and {b} (other braces doubled), else ValueError."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"judge template: {error} (write a literal brace as {{{{ or }}}})") from None
    if fields != TEMPLATE_FIELDS:
        raise ValueError(f"judge template: needs the fields {{prompt}}, {{a}} and {{b}} and no others, "
                         f"has {', '.join(sorted(f'{{{f}}}' for f in fields)) or 'none'}")
    return template


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m[0]}: {m[1]}" if not isinstance(m, dict) else f"{m['role']}: {m['content']}" for m in prompt)


def answer_token(tokenizer, letter: str) -> int:
    """The token the judge answers ``letter`` with: the first token of the letter's encoding."""
    ids = tokenizer.encode(letter, add_special_tokens=False)
    if not ids:
        raise ValueError(f"judge: the tokenizer encodes {letter!r} as no token")
    return int(ids[0])


@dataclass
class PairwiseJudge:
    """A pairwise judge LM (Zheng et al. 2023, "Judging LLM-as-a-Judge"; the pairwise AI feedback of
    Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"):

        p_A(a, b) = softmax(z_A, z_B)[A],  z the judge's next-token logits after ``template(x, a, b)``
        P(a ≻ b) = ½ [p_A(a, b) + p_B(b, a)]            (both orders: cancels position bias)

    so P(a ≻ b) + P(b ≻ a) = 1 exactly. The judging prompt is ``template`` (fields {prompt}, {a}, {b})
    as one user message under the tokenizer's chat template (with the assistant turn opened), or plain
    text when it has none; prompts are cut from the left to ``max_length`` tokens. ``batch_size``
    judging prompts per forward pass (left-padded)."""
    model: Any
    tokenizer: Any
    template: str = DEFAULT_TEMPLATE
    batch_size: int = 8
    max_length: int | None = None
    letters: tuple[int, int] = field(init=False)

    def __post_init__(self):
        check_template(self.template)
        self.letters = (answer_token(self.tokenizer, "A"), answer_token(self.tokenizer, "B"))
        if self.letters[0] == self.letters[1]:
            raise ValueError("judge: the tokenizer gives 'A' and 'B' the same first token")

    def judging_ids(self, prompt, a: str, b: str) -> list[int]:
        text = self.template.format(prompt=_prompt_text(prompt), a=a, b=b)
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                     add_generation_prompt=True, return_dict=False)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = self.tokenizer(text)["input_ids"]
        ids = [int(t) for t in ids]
        return ids[-self.max_length:] if self.max_length else ids

    @torch.no_grad()
    def first_letter(self, rows: list[list[int]]) -> Tensor:
        """p_A = P("A") / (P("A") + P("B")) at the end of each judging prompt: [len(rows)] float64."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, r in enumerate(chunk):
                ids[k, width - len(r):] = torch.tensor(r)
                att[k, width - len(r):] = 1
            pos = (att.cumsum(1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(device), attention_mask=att.to(device),
                                position_ids=pos.to(device), logits_to_keep=1).logits[:, -1]
            pair = logits[:, list(self.letters)].to(DTYPE)
            out.append(torch.softmax(pair, dim=-1)[:, 0].cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=DTYPE)

    def __call__(self, prompts, completions_a, completions_b, answers=None) -> Tensor:
        n = _lengths(prompts, completions_a, completions_b)
        if n == 0:
            return torch.zeros(0, dtype=DTYPE)
        was_training = self.model.training
        self.model.eval()
        try:
            rows = [self.judging_ids(x, a, b) for x, a, b in zip(prompts, completions_a, completions_b)]
            rows += [self.judging_ids(x, b, a) for x, a, b in zip(prompts, completions_a, completions_b)]
            p_first = self.first_letter(rows)
        finally:
            self.model.train(was_training)
        return 0.5 * (p_first[:n] + (1 - p_first[n:]))


# ------------------------------------------------------------------------------- user, tabular

@dataclass(frozen=True)
class UserPreference:
    """A user's preference model, ``"module:function"`` or ``"path/to/file.py:function"`` (loaded like
    reward functions, ``unigrad.rewards.loading``), with the protocol's signature
    ``fn(prompts, completions_a, completions_b, answers) -> [n]`` values in [0, 1]."""
    spec: str
    fn: Callable = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        from unigrad.rewards.loading import load_reward
        if not isinstance(self.spec, str) or ":" not in self.spec:
            raise ValueError(f"preference function {self.spec!r}: expected 'module:function' or 'path/to/file.py:function'")
        object.__setattr__(self, "fn", load_reward(self.spec))

    def __call__(self, prompts, completions_a, completions_b, answers=None) -> Tensor:
        n = _lengths(prompts, completions_a, completions_b)
        return checked(self.fn(list(prompts), list(completions_a), list(completions_b),
                               None if answers is None else list(answers)), n, f"preference function {self.spec!r}")


@dataclass(frozen=True)
class Tabular:
    """An exact matrix, P(y ≻ y′) = matrix[y, y′], over responses named by their index (or by
    ``responses``, then a completion is looked up there): the tabular game's preference
    (``unigrad.games.tabular.TabularGame.preference``) behind the protocol. Prompts are ignored."""
    matrix: Tensor
    responses: tuple | None = None

    def index(self, completion) -> int:
        return self.responses.index(completion) if self.responses is not None else int(completion)

    def __call__(self, prompts, completions_a, completions_b, answers=None) -> Tensor:
        rows = torch.tensor([self.index(a) for a in completions_a], dtype=torch.long)
        cols = torch.tensor([self.index(b) for b in completions_b], dtype=torch.long)
        return self.matrix.to(DTYPE)[rows, cols]


# -------------------------------------------------------------------------------------- building

@dataclass(frozen=True)
class WithoutAnswers:
    """A preference model that reads no reference answers (a learned reward model), behind the protocol."""
    inner: Callable

    def __call__(self, prompts, completions_a, completions_b, answers=None) -> Tensor:
        return torch.as_tensor(self.inner(prompts, completions_a, completions_b), dtype=DTYPE)


def bradley_terry(model, tokenizer, p) -> Preference:
    """σ(r(a) − r(b)) (``unigrad.rewards.bradley_terry.BradleyTerry``) over the reward-model role's
    ``model`` and ``tokenizer``, scored as ``RewardModel`` scores (``p``: the ``preference:`` section)."""
    from unigrad.rewards.bradley_terry import BradleyTerry
    from unigrad.rewards.models import RewardModel
    device = next(model.parameters()).device
    return WithoutAnswers(BradleyTerry(RewardModel(p.model, p.batch_size, device=device, max_length=p.max_length,
                                                   model=model, tokenizer=tokenizer)))


def build_preference(config, reward_fn=None, load=None) -> Preference:
    """The run's preference model from ``config.preference`` (a ``RunConfig``):

    - ``rule``: ``RulePreference`` of ``preference.function`` or, when unset, of the run's reward
      (``reward.function``; ``reward_fn`` when given), failures scored ``reward.fallback``;
    - ``function``: ``UserPreference(preference.function)``;
    - ``judge``: ``PairwiseJudge`` over the role ``preference`` (``preference.model``; ``policy``: a frozen
      copy of the initial policy), ``preference.template`` or the default;
    - ``reward-model``: ``BradleyTerry`` over the reward-model role ``preference.model``.

    ``load(role) -> (model, tokenizer)`` loads a model role (``unigrad.roles.load_role_and_tokenizer``
    bound to the run's policy, layout, device and dtype). Errors a user can fix are ConfigErrors."""
    from unigrad.config import ConfigError
    from unigrad.rewards.loading import load_reward
    from unigrad.roles import preference_role
    p = config.preference
    try:
        if p.kind == "rule":
            fn = load_reward(p.function) if p.function else (reward_fn or load_reward(config.reward.function))
            return RulePreference.of_reward(fn, config.reward.fallback)
        if p.kind == "function":
            if not p.function:
                raise ValueError("preference.kind=function needs preference.function: 'module:function'")
            return UserPreference(p.function)
        if not p.model:
            raise ValueError(f"preference.kind={p.kind} needs preference.model (a model name or folder, like "
                             f"model.name; 'policy' for a frozen copy of the initial policy)")
        model, tokenizer = load(preference_role(p.kind, p.model))
        if p.kind == "judge":
            return PairwiseJudge(model, tokenizer, p.template or DEFAULT_TEMPLATE, p.batch_size, p.max_length)
        return bradley_terry(model, tokenizer, p)
    except (ValueError, ImportError, AttributeError) as error:
        raise ConfigError(f"preference: {error}") from None


__all__ = ["DEFAULT_TEMPLATE", "PairwiseJudge", "Preference", "RewardScores", "RulePreference", "Tabular",
           "UserPreference", "WithoutAnswers", "build_preference", "check_template", "checked"]
