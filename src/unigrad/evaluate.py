"""Evaluation: a model on prompts with a reward (greedy accuracy, mean reward, pass@k, best-of-n),
and a method's objective on a held-out split during training.

``evaluate_prompts`` runs two passes over the prompts with ``HFSampler``:

1. greedy decoding (temperature 0), one completion per prompt: ``accuracy`` is the fraction of
   prompts whose reward is above ``threshold`` (0.5: a verifiable reward is 0 or 1), ``reward_mean``
   the mean reward;
2. unless ``num_samples == 0``, ``n = num_samples`` samples per prompt at ``temperature``:
   ``pass@k`` for each requested k (the unbiased estimator of Chen et al. 2021, see ``pass_at_k``),
   ``sample_reward_mean``, and ``best_of_n_accuracy``: pick the sample with the highest
   ``select_reward`` (default: ``reward_fn`` itself, which makes it an oracle and equal to pass@n;
   a reward model makes it a real best-of-n reranker) and score that pick with ``reward_fn``.

The result is a flat dict of numbers (JSON-ready) plus ``records``: per prompt, the prompt, answer,
greedy completion and reward, and the samples with their rewards.

``evaluate_pairs`` scores a reward model on preference pairs (a ``pairs`` file): ``pair_accuracy``,
the fraction of pairs with r(x, y⁺) > r(x, y⁻) (ties count ½; chance is 0.5), and ``margin_mean``,
the mean r⁺ − r⁻, on the tokens a ``reward-model`` run trains on.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence

import torch

from unigrad.data.prompts import PromptExample, encode_prompts, parse_prompts
from unigrad.data.sources import Record
from unigrad.rewards.scoring import best_of_n, score_rollouts
from unigrad.rollout import HFSampler

log = logging.getLogger("unigrad.evaluate")


# ------------------------------------------------------------------------------------------ pass@k

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem with ``n`` samples of which ``c`` are correct:
    ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021, "Evaluating Large Language Models Trained on
    Code", eq. 1). Computed as ``1 - prod_{i = n-c+1}^{n} (1 - k / i)``, which avoids the huge
    binomial coefficients; 1 when fewer than k samples are wrong (every k-subset holds a correct one).
    """
    n, c, k = int(n), int(c), int(k)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got {k}")
    if n < k:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"number correct c={c} must be in [0, n={n}]")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(num_correct: Iterable[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with ``n`` samples and ``num_correct[i]`` correct."""
    values = [pass_at_k(n, c, k) for c in num_correct]
    if not values:
        raise ValueError("pass@k over zero problems")
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------ evaluation

def as_examples(examples: Sequence[PromptExample | dict | str], tokenizer) -> list[PromptExample]:
    """``PromptExample``s with ``prompt_ids``, from examples, ``prompts`` records (dicts, e.g. from
    ``tasks.arithmetic.make_splits``) or bare prompt strings."""
    out: list[PromptExample] = []
    raw: list[Record] = []
    for i, ex in enumerate(examples):
        if isinstance(ex, PromptExample):
            out.append(ex)
            continue
        value = {"prompt": ex} if isinstance(ex, str) else ex
        raw.append(Record(value, "<evaluate>", row=i))
    if raw and out:
        raise ValueError("evaluate: give either PromptExamples or records, not both")
    if raw:
        out = parse_prompts(raw)
    missing = [ex for ex in out if ex.prompt_ids is None]
    if missing:
        out = [ex if ex.prompt_ids is not None else encode_prompts([ex], tokenizer)[0] for ex in out]
    return out


def _ks(k: int | Sequence[int] | None) -> list[int]:
    if k is None:
        return []
    ks = [int(k)] if isinstance(k, (int, float)) else [int(x) for x in k]
    if any(x < 1 for x in ks):
        raise ValueError(f"k must be >= 1, got {ks}")
    return sorted(set(ks))


def _generate(sampler: HFSampler, tokenizer, examples: list[PromptExample], n: int, chunk: int,
              max_new_tokens: int, temperature: float, top_p: float, seed: int, progress, desc: str):
    """Texts (prompt-major, ``n`` per prompt) and the ``finished`` flags."""
    texts: list[str] = []
    finished: list[bool] = []
    bar = _bar(len(examples), progress, desc)
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        rollouts = sampler.sample([list(ex.prompt_ids) for ex in part], n, max_new_tokens,
                                  temperature=temperature, top_p=top_p, seed=seed + start)
        texts.extend(rollouts.texts(tokenizer))
        finished.extend(bool(f) for f in rollouts.finished)
        bar.update(len(part))
    bar.close()
    return texts, finished


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not progress, desc=desc, unit="prompt", dynamic_ncols=True)


def _score(reward_fn, examples: list[PromptExample], texts: list[str]):
    return score_rollouts(reward_fn, [ex.prompt_text for ex in examples], texts, [ex.answer for ex in examples],
                          metas=[ex.extra for ex in examples])


def evaluate_prompts(model, tokenizer, examples: Sequence[PromptExample | dict | str], reward_fn: Callable,
                     k: int | Sequence[int] | None = 1, num_samples: int | None = None, temperature: float = 1.0,
                     max_new_tokens: int = 64, batch_size: int = 16, seed: int = 0, threshold: float = 0.5,
                     select_reward: Callable | None = None, top_p: float = 1.0, progress: bool = False,
                     sampler: HFSampler | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``examples`` with ``reward_fn(prompt, completion, answer, **meta)``.

    k: pass@k for each k (an int or a list). num_samples: samples per prompt for pass@k and best-of-n
      (default: the largest k; 0 skips sampling, leaving only the greedy metrics).
    temperature, top_p: sampling for pass@k (greedy decoding is always temperature 0).
    batch_size: rows (prompts × samples) decoded together. seed: sampling seed (same seed, same samples).
    threshold: a completion is correct when its reward is above this.
    select_reward: the reward that picks the best of the n samples (default ``reward_fn``).

    Returns a dict with ``num_prompts``, ``accuracy``, ``reward_mean``, ``finished_frac`` (greedy
    completions that ended with EOS rather than at ``max_new_tokens``), and with sampling
    ``num_samples``, ``pass@k`` for each k, ``sample_accuracy``, ``sample_reward_mean``,
    ``best_of_n_accuracy``, ``best_of_n_reward_mean``; ``reward_fallbacks`` (rewards that raised or were
    not finite), ``seconds``, ``settings`` and ``records`` (one dict per prompt: ``prompt``,
    ``answer``, ``completion``, ``reward``, ``correct`` and, with sampling, ``samples`` —
    ``[{"completion", "reward"}]`` —, ``num_correct``, ``best_of_n``).
    """
    started = time.perf_counter()
    examples = as_examples(examples, tokenizer)
    if not examples:
        raise ValueError("evaluate: no prompts")
    ks = _ks(k)
    n = (max(ks) if ks else 0) if num_samples is None else int(num_samples)
    if n < 0:
        raise ValueError(f"num_samples must be >= 0, got {n}")
    if n and ks and max(ks) > n:
        raise ValueError(f"pass@{max(ks)} needs at least {max(ks)} samples per prompt, got num_samples={n}")
    if n and temperature <= 0:
        log.warning("sampling at temperature %s is greedy: every sample is the same", temperature)
    batch_size = max(1, int(batch_size))
    sampler = sampler or HFSampler(model, tokenizer)

    # 1. greedy
    texts, finished = _generate(sampler, tokenizer, examples, 1, batch_size, max_new_tokens, 0.0, 1.0, seed,
                                progress, "greedy")
    rewards, report = _score(reward_fn, examples, texts)
    correct = rewards > threshold
    P = len(examples)
    result: dict[str, Any] = {
        "num_prompts": P,
        "accuracy": float(correct.float().mean()),
        "reward_mean": float(rewards.mean()),
        "finished_frac": sum(finished) / P,
    }
    fallbacks = report.num_fallback
    records = [{"prompt": ex.prompt_text, "answer": ex.answer, "completion": text, "reward": float(r),
                "correct": bool(ok)} for ex, text, r, ok in zip(examples, texts, rewards.tolist(), correct.tolist())]

    # 2. samples: pass@k and best-of-n
    if n:
        chunk = max(1, batch_size // n)
        texts_s, _ = _generate(sampler, tokenizer, examples, n, chunk, max_new_tokens, float(temperature),
                               float(top_p), seed, progress, f"samples x{n}")
        rs, report_s = _score(reward_fn, examples, texts_s)
        fallbacks += report_s.num_fallback
        rs = rs.view(P, n)
        ok = rs > threshold
        counts = ok.sum(1).tolist()
        result["num_samples"] = n
        for kk in ks:
            result[f"pass@{kk}"] = mean_pass_at_k(counts, n, kk)
        result["sample_accuracy"] = float(ok.float().mean())
        result["sample_reward_mean"] = float(rs.mean())
        if select_reward is None or select_reward is reward_fn:
            sel = rs
        else:
            sel, report_sel = _score(select_reward, examples, texts_s)
            fallbacks += report_sel.num_fallback
            sel = sel.view(P, n)
        pick = best_of_n(sel)
        picked = rs.gather(1, pick[:, None]).squeeze(1)
        result["best_of_n_accuracy"] = float((picked > threshold).float().mean())
        result["best_of_n_reward_mean"] = float(picked.mean())
        for i, rec in enumerate(records):
            rec["samples"] = [{"completion": texts_s[i * n + j], "reward": float(rs[i, j])} for j in range(n)]
            rec["num_correct"] = int(counts[i])
            rec["best_of_n"] = int(pick[i])

    result["reward_fallbacks"] = fallbacks
    result["seconds"] = time.perf_counter() - started
    result["settings"] = {"k": ks, "num_samples": n, "temperature": float(temperature), "top_p": float(top_p),
                          "max_new_tokens": int(max_new_tokens), "threshold": float(threshold), "seed": int(seed),
                          "batch_size": batch_size}
    result["records"] = records
    return result


def format_table(result: dict[str, Any]) -> str:
    """The headline numbers of ``evaluate_prompts``' result as a small two-column table."""
    s = result.get("settings", {})
    rows = [("prompts", str(result["num_prompts"])),
            ("accuracy (greedy)", f"{result['accuracy']:.4f}"),
            ("reward mean (greedy)", f"{result['reward_mean']:.4f}"),
            ("finished with EOS (greedy)", f"{result['finished_frac']:.4f}")]
    if result.get("num_samples"):
        n, t = result["num_samples"], s.get("temperature")
        for key in sorted((k for k in result if k.startswith("pass@")), key=lambda k: int(k[5:])):
            rows.append((f"{key} (n={n}, T={t:g})", f"{result[key]:.4f}"))
        rows.append((f"sample accuracy (T={t:g})", f"{result['sample_accuracy']:.4f}"))
        rows.append(("sample reward mean", f"{result['sample_reward_mean']:.4f}"))
        rows.append((f"best-of-{n} accuracy", f"{result['best_of_n_accuracy']:.4f}"))
    if result.get("reward_fallbacks"):
        rows.append(("reward fallbacks", str(result["reward_fallbacks"])))
    if "seconds" in result:
        rows.append(("seconds", f"{result['seconds']:.1f}"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


# ------------------------------------------------------------------------------------------ reward models

def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """(1/P) Σ_p [1(r⁺_p > r⁻_p) + ½ 1(r⁺_p = r⁻_p)]: how often the reward model ranks a pair as the data does."""
    if chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError(f"pair accuracy needs as many chosen as rejected scores, at least one; got "
                         f"{tuple(chosen.shape)} and {tuple(rejected.shape)}")
    return float(((chosen > rejected).double() + 0.5 * (chosen == rejected).double()).mean())


def evaluate_pairs(reward_model, path: str, max_length: int = 512, truncation: bool = False,
                   limit: int | None = None) -> dict[str, Any]:
    """``reward_model`` (a ``rewards.RewardModel``) on the preference pairs in ``path`` (``pairs`` format,
    tokenised as a training run tokenises them, cut to ``max_length``): ``num_pairs``, ``pair_accuracy``,
    ``margin_mean`` (mean r⁺ − r⁻), ``score_chosen_mean``, ``score_rejected_mean``, ``seconds``."""
    from unigrad.data import load_dataset_sequences
    started = time.perf_counter()
    sequences = load_dataset_sequences(path, "pairs", reward_model.tokenizer, max_length, truncation, limit=limit)
    if not sequences:
        raise ValueError(f"{path}: no pairs")
    scores = reward_model.score_ids([s.prompt_ids + s.completion_ids for s in sequences]).double()
    signs = torch.tensor([s.sign for s in sequences])
    chosen, rejected = scores[signs > 0], scores[signs < 0]   # chosen then rejected, pair by pair
    return {"num_pairs": int(chosen.numel()), "pair_accuracy": pair_accuracy(chosen, rejected),
            "margin_mean": float((chosen - rejected).mean()), "score_chosen_mean": float(chosen.mean()),
            "score_rejected_mean": float(rejected.mean()), "seconds": time.perf_counter() - started}


def format_pairs_table(result: dict[str, Any]) -> str:
    """The headline numbers of ``evaluate_pairs``' result as a small two-column table."""
    rows = [("pairs", str(result["num_pairs"])),
            ("pair accuracy (r+ > r-, chance 0.5)", f"{result['pair_accuracy']:.4f}"),
            ("mean margin r+ - r-", f"{result['margin_mean']:.4f}"),
            ("mean score chosen / rejected", f"{result['score_chosen_mean']:.4f} / {result['score_rejected_mean']:.4f}"),
            ("seconds", f"{result['seconds']:.1f}")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


__all__ = ["as_examples", "evaluate_pairs", "evaluate_prompts", "format_pairs_table", "format_table", "mean_pass_at_k",
           "pair_accuracy", "pass_at_k"]


# ------------------------------------------------------------------------------------------ during training

def evaluate_objective(loss_of: Callable, model, split, batch_size: int, device) -> dict:
    """The objective and its metrics on a whole dataset split (counts over the split, so sums are
    exact); ``loss_of(experience, rows, step_batch) -> (Output, tokens)`` is the training step's loss."""
    was_training = model.training
    model.eval()
    experience = split.experience(list(range(len(split.units))))
    step = experience.step_batch(device)
    objective, weighted, weight = 0.0, {}, 0.0
    with torch.no_grad():
        for start in range(0, len(experience.units), batch_size):
            units = list(range(start, min(start + batch_size, len(experience.units))))
            out, _ = loss_of(experience, experience.rows_of(units), step)
            objective += float(out.objective)
            for key, value in out.metrics.items():
                weighted[key] = weighted.get(key, 0.0) + float(value) * len(units)
            weight += len(units)
    model.train(was_training)
    return {"objective": objective, **{key: value / weight for key, value in weighted.items()}}


def evaluate_greedy(model, tokenizer, examples: list, reward_fn, rollout) -> dict:
    """Greedy held-out accuracy and mean reward on prompts (``rollout``: the run's RolloutConfig)."""
    result = evaluate_prompts(model, tokenizer, examples, reward_fn, k=None, num_samples=0,
                              max_new_tokens=rollout.max_new_tokens, batch_size=rollout.max_batch_size or 64)
    return {key: float(value) for key, value in result.items() if isinstance(value, (int, float))}
