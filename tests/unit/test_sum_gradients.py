"""``Processes.sum_gradients`` over two gloo processes: every gradient becomes the sum over processes, in
place, whatever the bucketing (parameters smaller than, larger than and straddling a bucket; a missing
gradient counts as zeros)."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHAPES = [(3,), (4, 5), (2,), (7, 3), (1,), (6,)]


def _grads(rank: int) -> list:
    generator = torch.Generator().manual_seed(rank)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in SHAPES]


def _worker(rank: int, init: str, bucket_elements: int, out: str) -> None:
    from unigrad.parallel import Processes
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64)) for shape in SHAPES]
    storages = []
    for i, (param, grad) in enumerate(zip(params, _grads(rank))):
        if not (i == 4 and rank == 1):           # process 1 has no gradient for parameter 4
            param.grad = grad.clone()
            storages.append(param.grad.data_ptr())
    Processes(rank=rank, world=2).sum_gradients(params, bucket_elements=bucket_elements)
    if rank == 0:
        torch.save({"grads": [p.grad for p in params],          # process 0 had every gradient: same storages
                    "in_place": [p.grad.data_ptr() for p in params] == storages}, out)
    dist.destroy_process_group()


def test_sum_gradients_buckets(tmp_path):
    expected = [a + b for a, b in zip(_grads(0), _grads(1))]
    expected[4] = _grads(0)[4]
    for bucket_elements in (1, 8, 25, 10 ** 6):
        out = tmp_path / f"out{bucket_elements}.pt"
        mp.spawn(_worker, args=(f"file://{tmp_path}/init{bucket_elements}", bucket_elements, str(out)), nprocs=2)
        result = torch.load(out)
        assert result["in_place"], bucket_elements
        for got, want in zip(result["grads"], expected):
            assert torch.equal(got, want), bucket_elements
