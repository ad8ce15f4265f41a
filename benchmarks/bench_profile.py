"""torch.profiler look at unigrad's steady-state steps (steps 2-3 of an SFT or DPO run), CPU.

    .venv/bin/python benchmarks/bench_profile.py [sft|dpo] [--out benchmarks/results/profile_sft.json]

Profiling starts right after step 1's update and stops after step 3's; prints the ops with the most
self CPU time and writes them (with their share of the profiled time) as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("method", nargs="?", default="sft")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_unigrad
    import unigrad.optim
    state = {"step": 0, "prof": None}
    apply_update = unigrad.optim.apply_update

    def profiled(*a, **k):
        out = apply_update(*a, **k)
        state["step"] += 1
        if state["step"] == 1:
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()
        elif state["step"] == 3:
            state["prof"].__exit__(None, None, None)
        return out

    sys.argv = [sys.argv[0], args.method, "3", "4", "/tmp/unigrad-bench/profile"]
    original_install = bench_unigrad.install_step_hook
    bench_unigrad.install_step_hook = lambda: (setattr(unigrad.optim, "apply_update", profiled), original_install())
    bench_unigrad.main()
    averages = state["prof"].key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    top = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:15]
    rows = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in top]
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
    out = Path(args.out or HERE / "results" / f"profile_{args.method}.json")
    out.write_text(json.dumps({"method": args.method, "steps_profiled": 2, "total_self_cpu_ms": total / 1000,
                               "top_ops": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
