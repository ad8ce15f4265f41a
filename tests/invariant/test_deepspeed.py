"""DeepSpeed ZeRO (stages 1-3, gloo on CPU): two processes give the same update as one process, offline
and online, and checkpoints resume across layouts; the DeepSpeed config is checked against unigrad's."""
import json

import pytest
import torch

from test_two_processes import (OFFLINE, ONLINE, RESUMABLE, ROOT, _accelerate, _final, _max_gap, _resumed_copy,
                                _tied_model, _train)

pytest.importorskip("deepspeed", reason="DeepSpeed is installed by setup.sh; this environment lacks it")


def test_zero_stages_equal_one_process(tmp_path):
    """ZeRO-1 (optimiser state sharded) through ``train.deepspeed``; ZeRO-2 (gradients too) with the
    optimiser offloaded, from a DeepSpeed config file given to accelerate."""
    _train(OFFLINE, tmp_path / "one")
    (tmp_path / "ds.json").write_text(json.dumps({
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 200000},
        "gradient_clipping": "auto", "train_micro_batch_size_per_gpu": "auto"}))
    accelerate = _accelerate("--use_deepspeed", "--deepspeed_config_file", str(tmp_path / "ds.json"))
    runs = {1: _train([*OFFLINE, "train.deepspeed=1"], tmp_path / "zero1", "--nproc", "2"),
            2: _train(OFFLINE, tmp_path / "zero2", launcher=accelerate)}
    for stage, result in runs.items():
        assert f"DeepSpeed ZeRO stage {stage} over 2 processes" in result.stderr
        assert _max_gap(_final(tmp_path / "one"), _final(tmp_path / f"zero{stage}")) < 1e-5, stage


def test_zero3_through_accelerate_equals_one_process(tmp_path):
    """`accelerate launch --use_deepspeed --zero_stage 3 --num_processes 2`: parameters sharded too, two
    micro-batches per process (the step is one DeepSpeed boundary), the reference held whole."""
    config = [*OFFLINE, "reference.precompute=false", "train.grad_accum=2"]
    _train(config, tmp_path / "one")
    result = _train(config, tmp_path / "two", launcher=_accelerate("--use_deepspeed", "--zero_stage", "3"))
    assert "DeepSpeed ZeRO stage 3" in result.stderr
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert _max_gap(a, b) < 1e-5
    from unigrad.models import load_model
    start = dict(load_model("tiny-random")[0].state_dict())
    assert _max_gap(a, {k: start[k] for k in a}) > 1e-4          # it did train


def test_zero3_online_rl_equals_one_process(tmp_path):
    """Online RL under ZeRO-3: generation on a whole copy of the policy, re-gathered after every update."""
    _train(ONLINE, tmp_path / "one")
    _train([*ONLINE, "train.deepspeed=3"], tmp_path / "two", "--nproc", "2")
    assert _max_gap(_final(tmp_path / "one"), _final(tmp_path / "two")) < 1e-5


def test_checkpoints_resume_across_zero_layouts(tmp_path):
    """Checkpoints hold full tensors and the optimiser state in the one-process layout: ZeRO-3 → one
    process, one process → ZeRO-2 and → ZeRO-3 all end at the uninterrupted run's weights."""
    config = RESUMABLE
    _train(config, tmp_path / "one")
    _train([*config, "train.deepspeed=3"], tmp_path / "zero3", "--nproc", "2")
    for written_by, resumed_with in (("zero3", []), ("one", ["train.deepspeed=2"]), ("one", ["train.deepspeed=3"])):
        resumed = _resumed_copy(tmp_path, written_by, f"{written_by}-{'-'.join(resumed_with) or 'one'}")
        result = _train([*config, *resumed_with], resumed, "--resume", *(["--nproc", "2"] if resumed_with else []))
        assert "resumed from" in result.stderr + result.stdout
        assert _max_gap(_final(resumed), _final(tmp_path / "one")) < 1e-5, (written_by, resumed_with)


def test_zero3_resumes_a_tied_embedding_model(tmp_path):
    """SmolLM2 ties its LM head to the embedding: ZeRO-3 saves it tied (no lm_head.weight, like one
    process) and resumes it to the uninterrupted run's weights."""
    config = [*RESUMABLE, f"model.name={_tied_model(tmp_path / 'tied')}", "train.deepspeed=3"]
    _train(config, tmp_path / "zero3", "--nproc", "2")
    resumed = _resumed_copy(tmp_path, "zero3", "resumed")
    _train(config, resumed, "--resume", "--nproc", "2")
    assert "lm_head.weight" not in _final(resumed) and "lm_head.weight" not in _final(tmp_path / "zero3")
    assert _max_gap(_final(resumed), _final(tmp_path / "zero3")) < 1e-6


def test_deepspeed_config_is_checked_against_unigrads(tmp_path):
    from unigrad.config import ConfigError
    from unigrad.parallel.zero import deepspeed_config, sized_for

    def written(fields: dict) -> str:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(fields))
        return str(path)

    config = deepspeed_config(2, 1.0, torch.float32, 1)
    assert config["zero_optimization"]["stage"] == 2 and config["gradient_clipping"] == 1.0
    assert config["managed_gradient_accumulation"] is False and "bf16" not in config
    assert deepspeed_config(3, None, torch.bfloat16, 1)["bf16"] == {"enabled": True}
    from_file = deepspeed_config(2, 1.0, torch.float32, 4, written(
        {"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_max_live_parameters": 1000},
         "gradient_clipping": "auto", "gradient_accumulation_steps": 4, "train_batch_size": "auto"}))
    assert from_file["zero_optimization"] == {"stage": 3, "stage3_max_live_parameters": 1000, "overlap_comm": False}
    assert from_file["gradient_accumulation_steps"] == 1                 # the loop owns accumulation
    with pytest.raises(ConfigError, match=r"ds.json: field 'optimizer' is set by unigrad's train.optimizer"):
        deepspeed_config(2, 1.0, torch.float32, 1, written({"optimizer": {"type": "Adam"}}))
    assert "bf16" not in deepspeed_config(2, 1.0, torch.float32, 1, written({"bf16": {"enabled": "auto"}}))
    with pytest.raises(ConfigError, match=r"ds.json: field 'bf16' is set by unigrad's model.dtype"):
        deepspeed_config(2, 1.0, torch.float32, 1, written({"bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"ds.json: field 'gradient_clipping' is 0.5.*train.max_grad_norm"):
        deepspeed_config(2, 1.0, torch.float32, 1, written({"gradient_clipping": 0.5}))
    from types import SimpleNamespace
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    sized = sized_for(from_file, model)["zero_optimization"]          # buckets the file left "auto"
    assert sized["reduce_bucket_size"] == 64 * 64 and sized["stage3_param_persistence_threshold"] == 640
    assert sized["stage3_max_live_parameters"] == 1000                  # the file's own value kept
    assert sized_for(deepspeed_config(2, 1.0, torch.float32, 1), model)["zero_optimization"].get(
        "stage3_prefetch_bucket_size") is None                          # stage-3 settings only at stage 3
    with pytest.raises(ConfigError, match="float16"):
        deepspeed_config(2, 1.0, torch.float16, 1)
    with pytest.raises(ConfigError, match="stage 4"):
        deepspeed_config(4, 1.0, torch.float32, 1)


def test_what_deepspeed_refuses(tmp_path, monkeypatch):
    from unigrad.config import ConfigError, load_config
    from unigrad.parallel import Processes, choose_layout
    from unigrad.train import train
    config = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [f"output_dir={tmp_path}", "train.steps=1"])
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="train.deepspeed: DeepSpeed cannot run with one process"):
        train(config, progress=False)
    with pytest.raises(ConfigError, match="choose one way to shard"):
        train(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), [f"output_dir={tmp_path}", "train.fsdp=true"]),
              progress=False)
    two = Processes(rank=0, world=2)
    lamb = load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), ["train.optimizer=lamb"])
    with pytest.raises(ConfigError, match="train.optimizer: 'lamb' under DeepSpeed.*element-wise"):
        choose_layout(lamb, two, torch.float32)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "ds.json"))
    with pytest.raises(ConfigError, match="train.deepspeed: 2, but the DeepSpeed config .*ds.json says "
                                          "zero_optimization.stage 3"):
        choose_layout(load_config(str(ROOT / "configs" / "tiny-dpo.yaml"), ["train.deepspeed=2"]), two, torch.float32)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.raises(ConfigError, match="ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4.*train.grad_accum: 1"):
        choose_layout(config, two, torch.float32)


GPUS = torch.cuda.device_count()


@pytest.mark.skipif(GPUS < 2, reason=f"DeepSpeed on GPUs (NCCL) needs at least 2 CUDA devices; this machine has {GPUS}")
def test_zero3_on_gpus_equals_one_gpu(tmp_path):
    """The documented GPU command, `accelerate launch --use_deepspeed --zero_stage 3` on NCCL, float32."""
    config = [*OFFLINE, "reference.precompute=false", "model.dtype=float32"]
    _train(config, tmp_path / "one")
    _train(config, tmp_path / "two", launcher=_accelerate("--use_deepspeed", "--zero_stage", "3"))
    assert _max_gap(_final(tmp_path / "one"), _final(tmp_path / "two")) < 1e-4
