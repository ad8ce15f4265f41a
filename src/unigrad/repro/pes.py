"""PES and ES-Single are unbiased where truncated backprop is not (Vicol et al. 2021; 2023), measured
with ``unigrad.gradients.unrolled`` on the papers' two toys:

- the influence-balancing toy (T = 100, K = 1 at θ = 0.5): the mean, over many independent draws, of
  each estimator's estimate of the meta-gradient dL/dθ of one inner problem (the sum of its
  truncations' estimates), against the exact total derivative from backprop through all T steps,
  with standard errors; and θ meta-trained online with SGD on each estimator;
- the learning-rate-schedule toy (inner SGD for T = 100 steps, lr_t = e^{θ₀}(T−t)/T + e^{θ₁}t/T,
  K = 10): θ meta-trained with Adam on each estimator, the meta-loss (the inner run's summed loss)
  against outer iterations — tuning a training hyper-parameter of a short inner run — and the variance
  of PES and ES-Single as the inner run is cut into more truncations.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from unigrad.repro.base import NOT_REPRODUCED, PARTLY, REPRODUCED, Claim, Outcome, Reproduction, Scale

PAPERS = ("Vicol, Metz & Sohl-Dickstein 2021, \"Unbiased Gradient Estimation in Unrolled Computation Graphs with "
          "Persistent Evolution Strategies\" (ICML, arXiv 2112.13835); Vicol, Kolter & Swersky 2023, \"Low-Variance "
          "Gradient Estimation in Unrolled Computation Graphs with ES-Single\" (ICML, arXiv 2304.11153)")
LABELS = {"tbptt": "truncated backprop", "es": "truncated ES", "pes": "PES", "es-single": "ES-Single"}
COLOURS = {"tbptt": "#d62728", "es": "#ff7f0e", "pes": "#1f77b4", "es-single": "#2ca02c"}


@dataclass(frozen=True)
class Setting:
    draws: int                 # independent estimates of dL/dθ per particle estimator
    particles: int             # N for the bias and variance measurement
    variance_draws: int        # draws per K in the variance-against-truncations measurement
    influence_iterations: int  # online outer SGD steps on the influence toy
    influence_particles: int
    schedule_iterations: int   # online outer Adam steps on the learning-rate-schedule toy
    eval_every: int


def setting(scale: Scale) -> Setting:
    return scale.pick(Setting(2000, 100, 300, 3000, 1000, 4000, 50),
                      Setting(600, 100, 100, 1500, 1000, 2000, 50),
                      Setting(30, 20, 10, 20, 20, 20, 10))


T_INFLUENCE, THETA_INFLUENCE, SIGMA_INFLUENCE, LR_INFLUENCE = 100, 0.5, 0.1, 1e-4
T_SCHEDULE, K_SCHEDULE, SIGMA_SCHEDULE, N_SCHEDULE, LR_SCHEDULE = 100, 10, 0.3, 100, 1e-2
THETA_VARIANCE = [-1.0, -1.0]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def measure_bias(s: Setting, seed: int = 0) -> dict:
    """Each estimator's estimates of dL/dθ at θ = 0.5 on the influence toy (T = 100, K = 1): mean,
    standard error, standard deviation, and the exact gradient; TBPTT is deterministic (one draw)."""
    import torch
    from unigrad.gradients.unrolled import DTYPE, InfluenceBalancing, exact_gradient, make
    problem = InfluenceBalancing(T_INFLUENCE)
    theta = torch.tensor([THETA_INFLUENCE], dtype=DTYPE)
    loss, exact = exact_gradient(problem, theta, 1)
    found = {"exact": float(exact[0]), "meta_loss": loss, "estimators": {}}
    for i, name in enumerate(LABELS):
        estimator = make(name, problem, 1, s.particles, SIGMA_INFLUENCE, seed=1000 * seed + i)
        values = [float(estimator.inner_problem(theta)[0]) for _ in range(1 if name == "tbptt" else s.draws)]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        se = sd / math.sqrt(len(values))
        found["estimators"][name] = {"draws": len(values), "mean": mean, "standard_error": se, "sd": sd,
                                     "bias": mean - found["exact"]}
    return found


def measure_variance(s: Setting, seed: int = 0) -> dict:
    """Total variance (trace of the covariance) of PES's and ES-Single's estimate of dL/dθ on the
    learning-rate-schedule toy (θ = THETA_VARIANCE, T = 100; its meta-objective, the sum of all inner
    losses, does not depend on K) as one inner problem is cut into T/K truncations, K from 100 to 1."""
    import torch
    from unigrad.gradients.unrolled import DTYPE, LearningRateSchedule, make
    problem = LearningRateSchedule(T_SCHEDULE)
    theta = torch.tensor(THETA_VARIANCE, dtype=DTYPE)
    ks = [100, 50, 20, 10, 5, 2, 1]
    found = {"theta": THETA_VARIANCE, "K": ks, "truncations": [T_SCHEDULE // k for k in ks]}
    for i, name in enumerate(("pes", "es-single")):
        variances = []
        for j, k in enumerate(ks):
            estimator = make(name, problem, k, N_SCHEDULE, SIGMA_SCHEDULE, seed=10_000 + 1000 * seed + 100 * i + j)
            values = torch.stack([estimator.inner_problem(theta) for _ in range(s.variance_draws)])
            variances.append(float(values.var(dim=0).sum()))
        found[name] = variances
    return found


def meta_train(name: str, problem, K: int, theta0, iterations: int, eval_every: int, optimiser, particles: int,
               sigma: float, seed: int) -> dict:
    """θ trained online: after every truncation, the estimator's ĝ_t is the outer optimiser's
    gradient. Every ``eval_every`` iterations: θ and the meta-loss L(θ) of a fresh inner problem."""
    import torch
    from unigrad.gradients.unrolled import DTYPE, make, meta_loss
    estimator = make(name, problem, K, particles, sigma, seed)
    theta = torch.tensor(theta0, dtype=DTYPE, requires_grad=True)
    opt = optimiser([theta])
    curve = {"iteration": [], "theta": [], "meta_loss": []}
    for it in range(iterations + 1):
        if it % eval_every == 0 or it == iterations:
            curve["iteration"].append(it)
            curve["theta"].append([float(v) for v in theta.detach()])
            curve["meta_loss"].append(meta_loss(problem, theta.detach(), K))
        if it == iterations:
            break
        theta.grad = estimator.step(theta.detach())
        opt.step()
    return curve


def influence_training(s: Setting, seeds: list[int]) -> dict:
    import torch
    from unigrad.gradients.unrolled import DTYPE, InfluenceBalancing, exact_gradient
    problem = InfluenceBalancing(T_INFLUENCE)
    a, b = torch.tensor([0.0], dtype=DTYPE), torch.tensor([1.0], dtype=DTYPE)
    ga, gb = exact_gradient(problem, a, 1)[1][0], exact_gradient(problem, b, 1)[1][0]
    optimum = float(-ga / (gb - ga))                   # L is quadratic in θ: θ* where dL/dθ = 0
    runs = {name: [meta_train(name, problem, 1, [THETA_INFLUENCE], s.influence_iterations, s.eval_every,
                              lambda p: torch.optim.SGD(p, lr=LR_INFLUENCE), s.influence_particles, SIGMA_INFLUENCE,
                              seed=seed) for seed in seeds] for name in LABELS}
    from unigrad.gradients.unrolled import meta_loss
    return {"optimum_theta": optimum, "optimum_meta_loss": meta_loss(problem, torch.tensor([optimum], dtype=DTYPE), 1),
            "runs": runs}


def schedule_training(s: Setting, seeds: list[int]) -> dict:
    import torch
    from unigrad.gradients.unrolled import LearningRateSchedule
    problem = LearningRateSchedule(T_SCHEDULE)
    adam = (lambda p: torch.optim.Adam(p, lr=LR_SCHEDULE, betas=(0.99, 0.999)))
    return {"runs": {name: [meta_train(name, problem, K_SCHEDULE, [-4.0, -4.0], s.schedule_iterations, s.eval_every,
                                       adam, N_SCHEDULE, SIGMA_SCHEDULE, seed=seed) for seed in seeds]
                     for name in LABELS}}


def _final(runs: list[dict], key: str = "meta_loss") -> tuple[float, float]:
    values = [r[key][-1] if key == "meta_loss" else r[key][-1][0] for r in runs]
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def _figures(folder: Path, bias: dict, variance: dict, influence: dict, schedule: dict) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = list(LABELS)
    for x, name in enumerate(names):
        e = bias["estimators"][name]
        ax.errorbar([x], [e["mean"]], yerr=[3 * e["standard_error"]], fmt="o", color=COLOURS[name], capsize=6,
                    label=f"{LABELS[name]}: {e['mean']:.0f} ± {e['standard_error']:.0f}")
    ax.axhline(bias["exact"], color="k", ls="--", label=f"exact dL/dθ (full backprop) = {bias['exact']:.0f}")
    ax.set_xticks(range(len(names)), [LABELS[n] for n in names])
    ax.set_ylabel("mean estimate of dL/dθ (± 3 s.e.)")
    ax.set_title(f"influence balancing, θ = {THETA_INFLUENCE}, T = {T_INFLUENCE}, K = 1")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "pes_bias.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name in ("pes", "es-single"):
        ax.loglog(variance["truncations"], variance[name], "o-", color=COLOURS[name], label=LABELS[name])
    ax.set_xlabel(f"truncations per inner problem (T/K, T = {T_SCHEDULE})")
    ax.set_title(f"learning-rate schedule toy, θ = {tuple(variance['theta'])}, N = {N_SCHEDULE}, σ = {SIGMA_SCHEDULE}")
    ax.set_ylabel("total variance of the estimate of dL/dθ (trace)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "pes_variance.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for name in LABELS:
        for j, run in enumerate(influence["runs"][name]):
            kw = {"color": COLOURS[name], "alpha": 0.8, "label": LABELS[name] if j == 0 else None}
            axes[0].plot(run["iteration"], [t[0] for t in run["theta"]], **kw)
            axes[1].semilogy(run["iteration"], run["meta_loss"], **kw)
        for j, run in enumerate(schedule["runs"][name]):
            axes[2].semilogy(run["iteration"], run["meta_loss"], color=COLOURS[name], alpha=0.8,
                             label=LABELS[name] if j == 0 else None)
    axes[0].axhline(influence["optimum_theta"], color="k", ls="--", label="θ* (exact)")
    axes[0].set_ylabel("θ")
    axes[0].set_title("influence balancing: θ (SGD, lr 1e-4, K = 1)")
    axes[1].axhline(influence["optimum_meta_loss"], color="k", ls="--", label="L(θ*)")
    axes[1].set_ylabel(f"meta-loss L(θ) (sum of {T_INFLUENCE} losses)")
    axes[1].set_title("influence balancing: meta-loss")
    axes[2].set_ylabel("meta-loss (sum of the inner run's losses)")
    axes[2].set_title(f"learning-rate schedule (Adam, lr 1e-2, K = {K_SCHEDULE})")
    for ax in axes:
        ax.set_xlabel("outer iterations (one per truncation)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "pes_training.png", dpi=110)
    plt.close(fig)
    return ["pes_bias.png", "pes_variance.png", "pes_training.png"]


RULE = ("On the influence-balancing toy at θ = 0.5 (T = 100, K = 1): reproduced if (a) truncated backprop's "
        "estimate of dL/dθ (deterministic here) differs from the exact gradient by more than 5 standard errors of "
        "the PES mean and by more than 10% of |dL/dθ|, (b) the means of PES and of ES-Single over the draws are each "
        "within 3 of their standard errors of the exact gradient, and (c) ES-Single's sample variance is below PES's on "
        "the same measurement; partly reproduced if (a) holds and at least one of PES and ES-Single passes (b); not reproduced "
        "otherwise. The meta-training curves are reported beside it, not judged.")


def decide(bias: dict) -> tuple[str, str]:
    """The rule applied to the measured numbers: (verdict, reason)."""
    e, exact = bias["estimators"], bias["exact"]
    z = {n: e[n]["bias"] / e[n]["standard_error"] if e[n]["standard_error"] > 0 else math.inf for n in ("pes", "es-single")}
    tb = e["tbptt"]["bias"]
    a = abs(tb) > 5 * e["pes"]["standard_error"] and abs(tb) > 0.1 * abs(exact)
    b = {n: abs(z[n]) <= 3 for n in z}
    c = e["es-single"]["sd"] < e["pes"]["sd"]
    verdict = REPRODUCED if a and all(b.values()) and c else PARTLY if a and any(b.values()) else NOT_REPRODUCED
    reason = (f"(a) truncated backprop {e['tbptt']['mean']:.1f} vs exact {exact:.1f}: bias {tb:.1f} = "
              f"{abs(tb) / e['pes']['standard_error']:.0f} PES s.e., {abs(tb) / abs(exact):.0%} of |dL/dθ| → "
              f"{'holds' if a else 'fails'}; (b) PES {z['pes']:+.2f} s.e., ES-Single {z['es-single']:+.2f} s.e. from "
              f"exact → {'both within 3' if all(b.values()) else 'not both within 3'}; (c) variance at K = 1: ES-Single "
              f"{e['es-single']['sd'] ** 2:.3g} vs PES {e['pes']['sd'] ** 2:.3g} → {'holds' if c else 'fails'}.")
    return verdict, reason


def run(folder: Path, scale: Scale) -> Outcome:
    import torch
    torch.set_num_threads(1)
    s = setting(scale)
    seeds = scale.seed_list(3)
    bias = measure_bias(s)
    variance = measure_variance(s)
    influence = influence_training(s, seeds)
    schedule = schedule_training(s, seeds)
    figures = _figures(folder, bias, variance, influence, schedule)
    verdict, reason = decide(bias)
    e = bias["estimators"]
    table = [{"estimator": LABELS[n], "draws": e[n]["draws"], "mean dL/dθ": e[n]["mean"],
              "standard error": e[n]["standard_error"], "exact dL/dθ": bias["exact"],
              "(mean − exact)/s.e.": (e[n]["bias"] / e[n]["standard_error"]) if e[n]["standard_error"] else None,
              "sd of one estimate": e[n]["sd"],
              "influence: final θ": _final(influence["runs"][n], "theta")[0],
              "schedule: meta-loss start → end": f"{schedule['runs'][n][0]['meta_loss'][0]:.1f} → "
                                                 f"{_final(schedule['runs'][n])[0]:.1f}"} for n in LABELS]
    ratio = e["pes"]["sd"] ** 2 / e["es-single"]["sd"] ** 2
    sched_ratio = [p / q for p, q in zip(variance["pes"], variance["es-single"])]
    ours = (f"exact dL/dθ = {bias['exact']:.1f}; truncated backprop {e['tbptt']['mean']:.1f}, truncated ES "
            f"{e['es']['mean']:.1f} ± {e['es']['standard_error']:.1f}, PES {e['pes']['mean']:.1f} ± "
            f"{e['pes']['standard_error']:.1f}, ES-Single {e['es-single']['mean']:.1f} ± "
            f"{e['es-single']['standard_error']:.1f} (± s.e., {s.draws} draws, N = {s.particles}); variance PES/ES-Single "
            f"{ratio:.2f}× (influence, 100 truncations), {sched_ratio[0]:.2f}× → {sched_ratio[-1]:.2f}× from 1 to 100 "
            f"truncations (learning-rate schedule); learning-rate schedule meta-loss "
            f"{schedule['runs']['pes'][0]['meta_loss'][0]:.0f} → PES {_final(schedule['runs']['pes'])[0]:.0f}, "
            f"ES-Single {_final(schedule['runs']['es-single'])[0]:.0f}, TBPTT {_final(schedule['runs']['tbptt'])[0]:.0f}")
    notes = (f"The influence toy's meta-loss is quadratic in θ, so Gaussian smoothing changes it by a constant only "
             f"and the exact gradient is the right target for the ES estimators. Its minimiser for T = {T_INFLUENCE} "
             f"is θ* = {influence['optimum_theta']:.4f}; final θ after {s.influence_iterations} online SGD steps "
             f"(mean over {len(seeds)} seed(s)): " +
             ", ".join(f"{LABELS[n]} {_final(influence['runs'][n], 'theta')[0]:.3f}" for n in LABELS) +
             f". The papers' influence experiment has no reset (T = ∞) and judges θ by a 500-step unroll; ours resets "
             f"after T = {T_INFLUENCE} steps and judges by the sum of the {T_INFLUENCE} losses. Learning-rate "
             f"schedule toy: θ from (−4, −4), Adam (β = 0.99, 0.999), σ = {SIGMA_SCHEDULE}, N = {N_SCHEDULE}, "
             f"{s.schedule_iterations} outer iterations (the paper runs 20000).")
    numbers = {"setting": asdict(s), "seeds": seeds, "bias": bias, "variance": variance,
               "influence_training": influence, "schedule_training": schedule}
    return Outcome(ours=ours, verdict=verdict, reason=reason, numbers=numbers, table=table, figures=figures,
                   notes=notes)


REPRODUCTION = Reproduction(
    name="pes-bias",
    title="PES and ES-Single are unbiased where truncated backprop is biased",
    claim=Claim(PAPERS,
                "PES §3 (unbiasedness) and §5, the influence-balancing experiment (a figure of θ and loss against "
                "outer iterations); ES-Single §3–4 (unbiased for quadratic inner problems; variance constant in the "
                "number of truncations) and its variance comparisons with PES",
                "Truncated backprop gives biased meta-gradients when the inner problem is cut into short "
                "truncations; PES, which accumulates the perturbations over the truncations, is unbiased; ES-Single, "
                "one perturbation per particle per inner problem, is also unbiased (for quadratic inner problems) and "
                "has lower variance than PES, constant in the number of truncations.",
                "Qualitative: on influence balancing (N = 1000, σ = 0.1, K = 1, SGD lr 1e-4) truncated backprop "
                "with short truncations does not reach the optimal θ while PES with K = 1 does; ES-Single's "
                "variance is reported substantially below PES's (no single number to quote)."),
    setting=(f"Influence balancing (n = 23, A = 0.5 on the diagonal and superdiagonal, 10 of 23 signs +1, s₀ = 1), "
             f"reset after T = {T_INFLUENCE} steps, K = 1, σ = {SIGMA_INFLUENCE}: at θ = {THETA_INFLUENCE}, 2000 "
             f"independent estimates of dL/dθ (the sum of one inner problem's truncation estimates) per particle "
             f"estimator with N = 100 antithetic particles (quick 600, tiny 30 with N = 20), and θ meta-trained online with SGD lr 1e-4, N = 1000 for 3000 steps (3 seeds; quick: "
             f"1500 steps, 1 seed). Learning-rate-schedule toy (inner SGD on the PES toy surface, T = 100, K = 10): θ "
             f"meta-trained with Adam lr 1e-2 for 4000 steps (quick 2000), and at θ = (−1, −1) the variance of PES "
             f"and ES-Single (N = 100, σ = 0.3, 300 draws per K; quick 100) as T = 100 is cut into 1 … 100 "
             f"truncations (this meta-objective, the sum of all inner losses, does not depend on K)."),
    measure=("Mean ± standard error of each estimator's dL/dθ against the exact total derivative (backprop through "
             "all T steps); variance of PES and ES-Single against the number of truncations; meta-loss and θ "
             "against outer iterations."),
    verdict_rule=RULE,
    run=run,
)
