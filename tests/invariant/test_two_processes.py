"""Two processes × batch b give the same update as one process × batch 2b (data parallel, gloo),
with the model replicated or sharded (FSDP2); checkpoints resume across the two layouts.
DeepSpeed ZeRO: test_deepspeed.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = [str(ROOT / "configs" / "tiny-dpo.yaml"), "train.steps=3", "train.save_every=0", "train.eval_every=0",
           "data.eval=null"]
# greedy rollouts do not depend on how prompts are split over processes
ONLINE = [str(ROOT / "configs" / "tiny-hpt.yaml"), "train.steps=3", "train.batch_size=4", "rollout.temperature=0",
          "data.task.eval_size=2"]


def _train(config: list[str], output_dir: Path, *extra: str, launcher: tuple = (sys.executable,)) -> subprocess.CompletedProcess:
    result = subprocess.run([*launcher, "-m", "unigrad", "train", *config, "--no-progress",
                             f"output_dir={output_dir}", *extra],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _final(output_dir: Path) -> dict:
    return load_file(str(output_dir / "final" / "model.safetensors"))


def _max_gap(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _one_and_two_processes(tmp_path: Path, config: list[str], two: tuple = ()) -> tuple[dict, dict]:
    """Final weights of the same run in one process and in two (with the extra options ``two``)."""
    _train(config, tmp_path / "one")
    _train([*config, *two], tmp_path / "two", "--nproc", "2")
    return _final(tmp_path / "one"), _final(tmp_path / "two")


def _accelerate(*flags: str) -> tuple:
    """``accelerate launch`` with two processes on this machine, no mixed precision, and ``flags``."""
    return (sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", *flags)


# four steps with a checkpoint after step 2 (for the resume tests)
RESUMABLE = [str(ROOT / "configs" / "tiny-dpo.yaml"), "train.steps=4", "train.save_every=2", "train.eval_every=0",
             "data.eval=null", "train.keep_checkpoints=5"]


def _resumed_copy(tmp_path: Path, written_by: str, name: str) -> Path:
    """A copy of run ``written_by`` as if killed after its step-2 checkpoint."""
    resumed = tmp_path / name
    shutil.copytree(tmp_path / written_by, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-000004", ignore_errors=True)
    return resumed


def _tied_model(folder: Path) -> str:
    """A tiny model whose LM head is its embedding (as SmolLM2's is), saved to ``folder``; its name."""
    from unigrad.models import save_model, tiny_random_model, tiny_tokenizer
    tokenizer = tiny_tokenizer()
    model = tiny_random_model(seed=1, tokenizer=tokenizer)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    save_model(model, tokenizer, folder)
    return str(folder)


def test_two_processes_equal_one(tmp_path):
    a, b = _one_and_two_processes(tmp_path, OFFLINE)
    assert _max_gap(a, b) < 1e-5


def test_fsdp_through_accelerate_equals_one_process(tmp_path):
    """`accelerate launch --use_fsdp --num_processes 2` (FSDP2 on gloo): parameters, gradients and
    optimiser state sharded, the reference model sharded too (per-batch reference log-probs), DPO
    pairs through the shared-prompt forward; the same update as one process."""
    config = [*OFFLINE, "reference.precompute=false"]
    _train(config, tmp_path / "one")
    result = _train(config, tmp_path / "two", launcher=_accelerate("--use_fsdp", "--fsdp_version", "2"))
    assert "FSDP" in result.stderr            # it did shard
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert _max_gap(a, b) < 1e-5
    from unigrad.models import load_model
    start = dict(load_model("tiny-random")[0].state_dict())
    assert _max_gap(a, {k: start[k] for k in a}) > 1e-4


def test_checkpoints_resume_across_layouts(tmp_path):
    """A checkpoint written by FSDP holds full tensors in the one-process layout: one process resumes
    it (and FSDP resumes a one-process checkpoint) to the same weights as the uninterrupted run."""
    config = RESUMABLE
    _train(config, tmp_path / "one")
    _train([*config, "train.fsdp=true"], tmp_path / "fsdp", "--nproc", "2")
    for written_by, resumed_with in (("fsdp", []), ("one", ["--nproc", "2"])):
        resumed = _resumed_copy(tmp_path, written_by, f"{written_by}-resumed")
        fsdp = ["train.fsdp=true"] if resumed_with else []
        result = _train([*config, *fsdp], resumed, "--resume", *resumed_with)
        assert "resumed from" in result.stderr + result.stdout
        assert _max_gap(_final(resumed), _final(tmp_path / "one")) < 1e-5, (written_by, resumed_with)


GPUS = torch.cuda.device_count()


@pytest.mark.skipif(GPUS < 2, reason=f"FSDP on GPUs (NCCL) needs at least 2 CUDA devices; this machine has {GPUS}")
def test_fsdp_on_gpus_equals_one_gpu(tmp_path):
    """The documented GPU command, `accelerate launch --use_fsdp --num_processes 2` on NCCL, in float32:
    the same weights as one GPU (to 1e-4: NCCL sums in a different order)."""
    config = [*OFFLINE, "reference.precompute=false", "model.dtype=float32"]
    _train(config, tmp_path / "one")
    _train(config, tmp_path / "two", launcher=_accelerate("--use_fsdp", "--fsdp_version", "2"))
    assert _max_gap(_final(tmp_path / "one"), _final(tmp_path / "two")) < 1e-4


def test_fsdp_online_rl_equals_one_process(tmp_path):
    """Online RL under FSDP: each process generates its share of the prompts on a whole copy of the
    policy (re-gathered after every update) and trains on the sharded model; greedy HPT as above."""
    a, b = _one_and_two_processes(tmp_path, ONLINE, ["train.fsdp=true"])
    assert _max_gap(a, b) < 1e-5


def test_fsdp_refuses_what_it_does_not_cover(tmp_path):
    result = subprocess.run([sys.executable, "-m", "unigrad", "train", *ONLINE, "train.fsdp=true",
                             "rollout.dynamic_sampling=true", "--no-progress", f"output_dir={tmp_path}", "--nproc", "2"],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert "train.fsdp" in result.stderr and "rollout.dynamic_sampling" in result.stderr


def test_single_process_fsdp_is_refused(tmp_path, monkeypatch):
    from unigrad.config import ConfigError, load_config
    from unigrad.train import train
    config = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [f"output_dir={tmp_path}", "train.steps=1"])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="train.fsdp: FSDP cannot run with one process"):
        train(config, progress=False)


def test_fsdp_resumes_a_tied_embedding_model(tmp_path):
    """SmolLM2 ties its LM head to the embedding, so its HF checkpoint has no lm_head.weight: FSDP saves
    it the same way and resumes it with the tie kept, to the uninterrupted run's weights."""
    config = [*RESUMABLE, f"model.name={_tied_model(tmp_path / 'tied')}", "train.fsdp=true"]
    _train(config, tmp_path / "fsdp", "--nproc", "2")
    resumed = _resumed_copy(tmp_path, "fsdp", "resumed")
    result = _train(config, resumed, "--resume", "--nproc", "2")
    assert "resumed from" in result.stderr + result.stdout
    final = _final(resumed)
    assert "lm_head.weight" not in final and "lm_head.weight" not in _final(tmp_path / "fsdp")  # saved tied
    assert _max_gap(final, _final(tmp_path / "fsdp")) < 1e-6


def test_mezo_two_processes_exchange_scalars_and_match_one_process(tmp_path):
    """MeZO-SGD on two processes sums the halves' objective values and takes the same seeded step."""
    one, two = _one_and_two_processes(tmp_path, [*OFFLINE, "train.gradient.name=mezo", "train.optimizer=sgd",
                                                 "train.lr=1e-3", "train.gradient.samples=2"])
    assert _max_gap(one, two) < 1e-5


def test_sophia_two_processes_sum_the_curvature_estimate_and_match_one_process(tmp_path):
    """Sophia's curvature estimate is summed over processes like a gradient: two processes with one
    micro-batch each take the steps of one process with two (the same micro-batches and the same label
    draws for Sophia-G; Sophia-H's u is drawn from the step alone and reduced the same way)."""
    one, two = _one_and_two_processes(tmp_path, [*OFFLINE, "train.optimizer=sophia-g", "train.optimizer_args.every=2",
                                                 "train.grad_accum=2"], two=("train.grad_accum=1",))
    assert _max_gap(one, two) < 1e-5
