"""ZO-RankSGD on a toy (Tang et al., ICLR 2024, §5 / Fig. 2), with unigrad's own estimators on a torch
module holding x: ``gradients.ZORank`` (ZO-RankSGD, from the ranking of m queries only),
``gradients.MeZO`` (ZO-SGD / SPSA, which sees the values) and ``gradients.ES`` (antithetic ES with
centred ranks), each applied by ``gradients.SeededSGD`` — the code path of a training run.

Every method spends the same 10 queries of f per step (m = 10 ranked points; 5 antithetic pairs), so
steps are proportional to queries. Each method's learning rate is the best of one grid on seed 0 (the
same tuning effort for each), then run on every seed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale

PAPER = ("Tang, Zheng, Gong, Li & Wang, \"Zeroth-Order Optimization Meets Human Feedback: Provable Learning via "
         "Ranking Oracles\" (ICLR 2024, arXiv 2303.03751)")
QUERIES = 10                      # f evaluations per step, every method
TOP = 3                           # k < m for the partial ranking
MU = 1e-2                         # perturbation scale of every method
METHODS = {"zo-rank": f"ZO-RankSGD (m = {QUERIES}, k = {QUERIES})", "zo-rank-k": f"ZO-RankSGD (m = {QUERIES}, k = {TOP})",
           "zo-sgd": f"ZO-SGD / SPSA (MeZO, {QUERIES // 2} pairs)", "es": f"ES, centred ranks ({QUERIES // 2} pairs)"}
COLOURS = {"zo-rank": "#1f77b4", "zo-rank-k": "#17becf", "zo-sgd": "#d62728", "es": "#2ca02c"}
FUNCTIONS = ("quadratic", "rosenbrock")


@dataclass(frozen=True)
class Setting:
    dimension: int
    steps: int                # steps per run (× QUERIES queries)
    grid: tuple               # log10 learning rates tried on seed 0
    seeds: int
    alignment_draws: int      # directions averaged for the expected direction
    every: int                # steps between recorded values


def setting(scale: Scale) -> Setting:
    grid = tuple(x / 2 for x in range(-12, 1))            # 1e-6 … 1, half decades
    return scale.pick(Setting(100, 2000, grid, 3, 3000, 50), Setting(100, 1000, grid, 1, 1000, 50),
                      Setting(10, 10, (-2.0, -1.0), 1, 10, 5))


def _module(function: str, dimension: int):
    """A torch module with parameter x at the start point and f(x): the quadratic ‖x‖² from x = 1, or
    Rosenbrock Σ_i 100 (x_{i+1} − x_i²)² + (1 − x_i)² from x = 0."""
    import torch

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            start = torch.ones(dimension) if function == "quadratic" else torch.zeros(dimension)
            self.x = torch.nn.Parameter(start.double())

        def f(self, x=None):
            x = self.x if x is None else x
            if function == "quadratic":
                return (x * x).sum()
            return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

        def micro_batches(self):
            from types import SimpleNamespace
            return [lambda: (SimpleNamespace(objective=self.value(), metrics={}), 0)]

        def value(self) -> float:
            with torch.no_grad():
                return float(self.f())
    return Toy()


def _estimator(method: str, toy, seed: int, into_grad: bool = False):
    from unigrad.gradients import ES, MeZO, ZORank
    params = [toy.x]
    if method in ("zo-rank", "zo-rank-k"):
        return ZORank(toy, params, QUERIES, MU, None if method == "zo-rank" else TOP, seed, into_grad=into_grad)
    if method == "zo-sgd":
        return MeZO(toy, params, QUERIES // 2, MU, seed, into_grad=into_grad)
    return ES(toy, params, QUERIES // 2, MU, "centered-ranks", seed, into_grad=into_grad)


def optimise(function: str, method: str, lr: float, s: Setting, seed: int) -> dict:
    """f against queries for one method from the function's start point, θ ← θ − lr · direction."""
    import torch
    from unigrad.gradients import SeededSGD
    toy = _module(function, s.dimension)
    estimator = _estimator(method, toy, seed)
    rule = SeededSGD([toy.x], torch.optim.SGD([toy.x], lr=lr), estimator)
    batches = toy.micro_batches()
    queries, values = [0], [toy.value()]
    for step in range(s.steps):
        rule(step, lambda: estimator(batches, None, step), None)
        value = toy.value()
        if not math.isfinite(value) or value > 1e12:
            values.append(math.inf)
            queries.append((step + 1) * QUERIES)
            break
        if (step + 1) % s.every == 0 or step + 1 == s.steps:
            queries.append((step + 1) * QUERIES)
            values.append(value)
    return {"lr": lr, "queries": queries, "f": values, "final": values[-1]}


def alignment(function: str, method: str, s: Setting) -> dict:
    """The mean of ``alignment_draws`` directions at the start point, against ∇f: the cosine (ZO-RankSGD's
    Lemma: E[S] is a positive multiple of ∇f/‖∇f‖ for small μ, so θ − ηS descends)."""
    import torch
    toy = _module(function, s.dimension)
    gradient = torch.autograd.grad(toy.f(), toy.x)[0]
    estimator = _estimator(method, toy, seed=12345, into_grad=True)
    estimator.mu = 1e-4
    total = torch.zeros_like(gradient)
    for key in range(s.alignment_draws):
        estimator(toy.micro_batches(), None, key)
        total += toy.x.grad
    return {"cosine": float(total @ gradient / (total.norm() * gradient.norm())), "draws": s.alignment_draws}


def _tune(function: str, method: str, s: Setting) -> tuple[float, list]:
    """The learning rate of the grid with the lowest final f on seed 0 (ties: the smaller rate)."""
    tried = [optimise(function, method, 10 ** g, s, 0) for g in s.grid]
    best = min(tried, key=lambda r: (r["final"], r["lr"]))
    return best["lr"], [{"lr": r["lr"], "final": r["final"]} for r in tried]


def _geomean(values: list[float]) -> float:
    if any(not math.isfinite(v) for v in values):
        return math.inf
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values))


RULE = ("For each function (quadratic ‖x‖² from x = 1 and Rosenbrock from x = 0, d = 100, the same 10 queries per "
        "step for every method, each method's learning rate the best of one grid of 13 on seed 0): (a) ZO-RankSGD with "
        "k = m ends, in every seed, below half of f at the start; (b) its final f (geometric mean over the seeds) is at "
        "most 2× that of ZO-SGD at the same number of queries; (c) the mean of its directions at the start point has "
        "cosine ≥ 0.9 with ∇f. Reproduced if (a), (b) and (c) hold on both functions; partly reproduced if (c) holds on "
        "both and (a) on at least one; not reproduced otherwise. ZO-RankSGD with k < m and ES are reported beside, not "
        "judged.")


def decide(found: dict) -> tuple[str, str]:
    parts, holds = [], {}
    for function in FUNCTIONS:
        r = found[function]
        start = r["start"]
        rank = [run["final"] for run in r["runs"]["zo-rank"]]
        a = all(v < 0.5 * start for v in rank)
        ratio = _geomean(rank) / _geomean([run["final"] for run in r["runs"]["zo-sgd"]])
        b = ratio <= 2
        c = r["alignment"]["zo-rank"]["cosine"] >= 0.9
        holds[function] = (a, b, c)
        parts.append(f"{function}: (a) ZO-RankSGD final f {', '.join(f'{v:.3g}' for v in rank)} vs start {start:.3g} → "
                     f"{'holds' if a else 'fails'}; (b) ZO-RankSGD / ZO-SGD final f = {ratio:.3g} → "
                     f"{'holds' if b else 'fails'}; (c) cosine {r['alignment']['zo-rank']['cosine']:.3f} → "
                     f"{'holds' if c else 'fails'}")
    if all(all(h) for h in holds.values()):
        verdict = REPRODUCED
    elif all(h[2] for h in holds.values()) and any(h[0] for h in holds.values()):
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    return verdict, "; ".join(parts) + "."


def _figures(folder: Path, found: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(FUNCTIONS), figsize=(13, 4.4))
    for ax, function in zip(axes, FUNCTIONS):
        for method, label in METHODS.items():
            for j, run in enumerate(found[function]["runs"][method]):
                ax.semilogy(run["queries"], [max(v, 1e-12) for v in run["f"]], color=COLOURS[method], alpha=0.8,
                            ls="--" if method == "zo-rank-k" else "-",
                            label=f"{label}, lr {run['lr']:.3g}" if j == 0 else None)
        ax.set_xlabel("queries of f")
        ax.set_ylabel("f(x)")
        ax.set_title(f"{function}, d = {found['setting']['dimension']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "zo_rank_loss.png", dpi=110)
    plt.close(fig)
    return ["zo_rank_loss.png"]


def run(folder: Path, scale: Scale) -> Outcome:
    import torch
    torch.set_num_threads(1)
    s = setting(scale)
    seeds = scale.seed_list(s.seeds)
    found = {"setting": asdict(s), "seeds": seeds, "queries_per_step": QUERIES, "mu": MU}
    for function in FUNCTIONS:
        r = {"start": _module(function, s.dimension).value(), "tuning": {}, "runs": {}, "alignment": {}}
        for method in METHODS:
            lr, tried = _tune(function, method, s)
            r["tuning"][method] = tried
            r["runs"][method] = [optimise(function, method, lr, s, seed) for seed in seeds]
        for method in ("zo-rank", "zo-rank-k"):
            r["alignment"][method] = alignment(function, method, s)
        found[function] = r
    verdict, reason = decide(found)
    table = [{"function": function, "method": METHODS[method], "lr": found[function]["runs"][method][0]["lr"],
              "f at start": found[function]["start"],
              f"final f after {s.steps * QUERIES} queries (geometric mean)":
                  _geomean([run["final"] for run in found[function]["runs"][method]]),
              "cosine(E[direction], ∇f)": found[function]["alignment"].get(method, {}).get("cosine")}
             for function in FUNCTIONS for method in METHODS]
    ours = "; ".join(
        f"{function} (d = {s.dimension}, {s.steps * QUERIES} queries): " +
        ", ".join(f"{METHODS[m]} {found[function]['start']:.3g} → "
                  f"{_geomean([run['final'] for run in found[function]['runs'][m]]):.3g}" for m in METHODS) +
        f"; cosine of ZO-RankSGD's mean direction with ∇f {found[function]['alignment']['zo-rank']['cosine']:.3f} "
        f"(k = {TOP}: {found[function]['alignment']['zo-rank-k']['cosine']:.3f})" for function in FUNCTIONS)
    notes = (f"Every method perturbs with scale μ = {MU} and spends {QUERIES} queries per step; ZO-SGD is MeZO's "
             f"two-sided SPSA averaged over {QUERIES // 2} directions (the paper's ZO-SGD baseline may use one-sided "
             f"differences); ES uses centred ranks, so it too sees only the order of the values. Learning rates: "
             f"the best of 10^{s.grid[0]} … 10^{s.grid[-1]} for each method on seed 0. The expected direction is the "
             f"mean of {s.alignment_draws} directions at the start point with μ = 1e-4. A rank-based step does not "
             f"shrink as ∇f → 0 (its size is set by μ and η, not by the values), so at a constant learning rate "
             f"ZO-RankSGD and ranked ES stall at a noise floor where value-based ZO-SGD keeps converging.")
    return Outcome(ours=ours, verdict=verdict, reason=reason, numbers=found, table=table, figures=_figures(folder, found),
                   notes=notes)


REPRODUCTION = Reproduction(
    name="zo-rank-toy",
    title="ZO-RankSGD converges from a ranking oracle alone, as ZO-SGD does from values",
    claim=Claim(PAPER, "§5 (synthetic functions), Fig. 2; Lemma/Theorem on the expected direction (§4)",
                "On synthetic test functions in high dimension (a quadratic and Rosenbrock), ZO-RankSGD, which "
                "sees only a ranking of m perturbed points, converges, comparably to ZO-SGD, which sees the function "
                "values, at the same number of queries; its expected direction is aligned with the gradient.",
                "Qualitative (Fig. 2 curves of f against queries); no single number to quote."),
    setting=("f(x) = ‖x‖² from x = 1 and Rosenbrock Σ 100(x_{i+1} − x_i²)² + (1 − x_i)² from x = 0, d = 100, as "
             "a torch module trained by unigrad's estimators and SeededSGD: ZO-RankSGD (m = 10, k = 10 and k = 3), "
             "ZO-SGD (MeZO, 5 antithetic pairs) and ES (5 pairs, centred ranks), all at μ = 1e-2 and 10 queries per "
             "step, 2000 steps (20 000 queries; quick 1000), learning rate the best of a grid of 13 (1e-6 … 1, "
             "half decades) on seed 0, then 3 seeds (quick 1). Expected direction: the mean of 3000 ZO-RankSGD directions (quick 1000) at "
             "the start point, μ = 1e-4."),
    measure="f against queries for each method; the cosine between ZO-RankSGD's mean direction and ∇f.",
    verdict_rule=RULE,
    run=run,
)
