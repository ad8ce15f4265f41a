"""torch.profiler look at unigrad's steady-state steps (steps 2-3 of an SFT or DPO run), CPU.

    .venv/bin/python benchmarks/bench_profile.py [sft|dpo]

Profiling starts at the end of optimiser step 1 and stops at the end of step 3 (AdamW post-step
hook); prints the ops with the most self CPU time and the RSS right after model load / step 1.
"""
from __future__ import annotations

import resource
import sys

from torch.profiler import ProfilerActivity, profile

STATE = {"step": 0, "prof": None, "rss": []}


def _hook(optimizer, args, kwargs):
    STATE["step"] += 1
    STATE["rss"].append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    if STATE["step"] == 1:
        STATE["prof"] = profile(activities=[ProfilerActivity.CPU])
        STATE["prof"].__enter__()
    elif STATE["step"] == 3:
        STATE["prof"].__exit__(None, None, None)


def main() -> None:
    sys.argv = [sys.argv[0], sys.argv[1] if len(sys.argv) > 1 else "sft", "3", "4", "/tmp/unigrad-bench/profile"]
    import bench_unigrad
    bench_unigrad._hook = _hook
    bench_unigrad.main()
    print("peak RSS (MB) after each step:", STATE["rss"])
    print(STATE["prof"].key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
