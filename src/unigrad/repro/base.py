"""A reproduction: a paper's claim, the experiment that tests it at our scale, and the verdict rule,
fixed before the run, that turns the measurement into *reproduced*, *partly reproduced* or *not
reproduced*.

A reproduction module defines one ``Reproduction`` value. Its ``run(folder, scale)`` does the
experiment, writes its figures into ``folder`` and returns an ``Outcome``: our numbers beside the
paper's, the verdict the rule gives them and why. ``unigrad.repro.runner`` writes the result JSON,
the page and the index around it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED)


@dataclass(frozen=True)
class Claim:
    """What the paper says: its title, where (table or figure), the claim in its words, and its number
    with the setting it was measured in."""
    paper: str
    where: str
    statement: str
    paper_number: str


@dataclass(frozen=True)
class Scale:
    """How big a run is. ``full``: the setting the results page quotes. ``quick``: one seed and fewer
    steps, ≤ 10 minutes on 2 CPU cores. ``tiny``: a tiny random model, seconds — it checks that the
    reproduction runs, its numbers mean nothing. ``seeds`` overrides the scale's number of seeds."""
    quick: bool = False
    tiny: bool = False
    seeds: int | None = None
    progress: bool = False

    @property
    def name(self) -> str:
        return "tiny" if self.tiny else "quick" if self.quick else "full"

    def seed_list(self, full: int) -> list[int]:
        """Seeds 0..n−1: ``seeds`` if given, else 1 when quick or tiny, else ``full``."""
        n = self.seeds if self.seeds is not None else (1 if self.quick or self.tiny else full)
        if n < 1:
            raise ValueError(f"--seeds must be at least 1, got {n}")
        return list(range(n))

    def pick(self, full, quick, tiny):
        """The value of a setting at this scale."""
        return tiny if self.tiny else quick if self.quick else full


@dataclass
class Outcome:
    """What a run measured. ``ours``: one line beside the paper's number. ``verdict``: one of
    ``VERDICTS``, by the reproduction's rule; ``reason``: the rule applied to these numbers.
    ``numbers``: everything measured (JSON-ready). ``table``: rows shown on the page (dicts with the
    same keys). ``figures``: image files written into the run's folder. ``notes``: what to read into it.
    ``links``: further pages in the folder (e.g. the runs' training curves overlaid)."""
    ours: str
    verdict: str
    reason: str
    numbers: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: str = ""
    links: dict[str, str] = field(default_factory=dict)    # title -> a page under the run's folder

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass(frozen=True)
class Reproduction:
    """One claim and its test. ``setting``: the experiment at our scale, in words; ``measure``: what
    is measured; ``verdict_rule``: how the numbers decide the verdict, stated before any run.
    ``run(folder, scale) -> Outcome``."""
    name: str
    title: str
    claim: Claim
    setting: str
    measure: str
    verdict_rule: str
    run: Callable[[Path, Scale], Outcome]


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5


__all__ = ["Claim", "NOT_REPRODUCED", "Outcome", "PARTLY", "REPRODUCED", "Reproduction", "Scale", "VERDICTS", "spread"]
