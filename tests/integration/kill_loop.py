"""SIGKILL a training run again and again, resuming each time; compare with the uninterrupted run.

    python tests/integration/kill_loop.py CONFIG OUT --kills 20 [key=value ...]

One driver process imports unigrad once and forks a child per attempt (the driver itself runs no
torch computation, so forking is safe): the child runs ``train(config, resume=True)`` and the driver
kills it with SIGKILL, either after a random delay (seeded) or, for every fourth kill, the moment a
checkpoint's temporary folder appears, i.e. in the middle of a checkpoint write. After the kills, one
last child runs to the end. Prints one JSON line: kills, kills during a write, the largest weight
difference from an uninterrupted run of the same config; exits 1 if it is above 1e-6.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path


def _child(config, resume: bool) -> None:
    from unigrad.train import train
    try:
        train(config, resume=resume, progress=False)
    except BaseException:       # noqa: BLE001 — the child reports by its exit code only
        os._exit(1)
    os._exit(0)


def _run(config, resume: bool, kill_after: float | None = None, kill_in_write: Path | None = None) -> str:
    """Fork a child running ``config``; kill it as asked. Returns how it ended."""
    pid = os.fork()
    if pid == 0:
        _child(config, resume)
    started = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "finished" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        writing = kill_in_write is not None and kill_in_write.is_dir() and any(kill_in_write.glob(".tmp-step-*"))
        if writing or (kill_after is not None and time.monotonic() - started > kill_after):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "killed in a write" if writing else "killed"
        time.sleep(0.0005 if kill_in_write is not None else 0.005)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("out", type=Path)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=2.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    import torch
    torch.set_num_threads(1)
    import unigrad.train  # noqa: F401 — imported once here, not in every forked child
    from unigrad.config import load_config

    def config(out: Path):
        return load_config(args.config, [*args.overrides, f"output_dir={out}"])

    if _run(config(args.out / "uninterrupted"), False) != "finished":
        print(json.dumps({"error": "the uninterrupted run failed"}))
        return 1
    rng, killed, in_write, attempts = random.Random(args.seed), 0, 0, 0
    interrupted = args.out / "interrupted"
    while killed < args.kills and attempts < 4 * args.kills:
        attempts += 1
        in_a_write = killed % 4 == 3
        how = _run(config(interrupted), True, kill_after=None if in_a_write else rng.uniform(0.05, args.max_delay),
                   kill_in_write=interrupted / "checkpoints" if in_a_write else None)
        if how == "failed":
            print(json.dumps({"error": f"a resumed run failed after {killed} kills"}))
            return 1
        if how == "finished":       # it ran to the end before the kill: start over
            shutil.rmtree(interrupted)
            continue
        killed += 1
        in_write += how == "killed in a write"
    if _run(config(interrupted), True) != "finished":
        print(json.dumps({"error": "the last resumed run failed"}))
        return 1
    reference, resumed = _weights(args.out / "uninterrupted" / "final"), _weights(interrupted / "final")
    gap = max(float((reference[name].double() - resumed[name].double()).abs().max()) for name in reference)
    print(json.dumps({"kills": killed, "kills_in_a_write": in_write, "attempts": attempts, "max_weight_diff": gap}))
    return 0 if killed == args.kills and gap <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
