"""recipe/muon.py: torch.optim.Muon's update, bit for bit in bf16; the device's precision; and the same bits when
the Newton-Schulz work is split among processes, whole (DDP) or sharded by rows (FSDP2's DTensors)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recipe.muon import CPU_BF16_MIN_SIDE, Muon, newton_schulz, newton_schulz_dtype, owners, row_shards

SETTINGS = dict(lr=0.02, momentum=0.95, weight_decay=0.1)


@pytest.mark.parametrize("row_blocks", [1, 3])
def test_the_update_is_torchs_muon_bit_for_bit_in_bf16(row_blocks):
    """Matrices of 128 or more on a side iterate in bf16 on a CPU, as torch's Muon always does: the same bits, step
    by step; a (3n, n) matrix with row_blocks=3 moves as torch's Muon moves three (n, n) matrices."""
    torch.manual_seed(0)
    fused = torch.nn.Parameter(torch.randn(row_blocks * 128, 128))
    separate = [torch.nn.Parameter(block.detach().clone()) for block in fused.chunk(row_blocks)]
    ours = Muon([{"params": [fused], "row_blocks": row_blocks}], **SETTINGS)
    reference = torch.optim.Muon(separate, **SETTINGS)
    for step in range(4):
        gradient = torch.randn(fused.shape, generator=torch.Generator().manual_seed(step))
        fused.grad = gradient.clone()
        for parameter, block in zip(separate, gradient.chunk(row_blocks)):
            parameter.grad = block.clone()
        ours.step()
        reference.step()
        assert torch.equal(fused.detach(), torch.cat([parameter.detach() for parameter in separate])), step
    assert ours.state[fused]["momentum_buffer"].shape == fused.shape  # one buffer per parameter, as torch's
    with pytest.raises(ValueError, match="c_attn has 48 rows, which do not split into 5 blocks"):
        Muon([{"params": [("c_attn", torch.nn.Parameter(torch.zeros(48, 16)))], "row_blocks": 5}], **SETTINGS)


def test_small_matrices_iterate_in_float32_on_a_cpu_and_give_the_bf16_update_within_its_rounding():
    """On a CPU, fp32 products of matrices under 128 on a side are faster than bf16 ones (benchmarks/RESULTS.md);
    GPUs keep bf16. The two differ by bf16's rounding over 5 steps: at most 2.9e-2 of the largest entry (measured
    on 64 x 64 to 3,072 x 768, 5 seeds each), against 0.28 and more for an iteration one step short: 6e-2 leaves 2x
    for other shapes and still catches that."""
    assert newton_schulz_dtype(torch.device("cpu"), (64, 256)) == torch.float32
    assert newton_schulz_dtype(torch.device("cpu"), (CPU_BF16_MIN_SIDE, 512)) == torch.bfloat16
    assert newton_schulz_dtype(torch.device("cuda"), (64, 64)) == torch.bfloat16
    for seed, shape in enumerate([(64, 64), (192, 64), (64, 256), (300, 96)]):
        update = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        full, half = newton_schulz(update, torch.float32), newton_schulz(update, torch.bfloat16).float()
        scale = full.abs().max()
        assert (full - half).abs().max() <= 6e-2 * scale
        assert (newton_schulz(update, torch.float32, steps=4) - full).abs().max() > 6e-2 * scale


def test_owners_balance_the_work_and_every_process_computes_the_same_plan():
    costs = [8.0, 1.0, 1.0, 4.0, 4.0, 2.0]
    assert owners(costs, 2) == [0, 1, 1, 1, 1, 0] == owners(list(costs), 2)  # 8+2 = 10 against 1+1+4+4 = 10
    assert owners(costs, 1) == [0] * 6
    assert sorted(set(owners([1.0] * 8, 4))) == [0, 1, 2, 3]
    assert row_shards(99, 2) == [(0, 50), (50, 99)] and row_shards(3, 4) == [(0, 1), (1, 2), (2, 3), (3, 3)]


# -- the same bits on several processes ----------------------------------------------------------------------------

# Shapes that make the split uneven: rows that do not halve (99), a q/k/v matrix, bf16 and fp32 iterations together.
SHAPES = [((3 * 96, 96), 3), ((99, 40), 1), ((40, 160), 1), ((256, 128), 1), ((160, 40), 1)]
STEPS = 3


def _parameters():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for shape, _ in SHAPES]


def _gradient(step: int, index: int):
    return torch.randn(SHAPES[index][0], generator=torch.Generator().manual_seed(100 * step + index))


def _train(parameters, to_parameter, to_gradient, full):
    groups = [{"params": [to_parameter(tensor)], "row_blocks": blocks} for tensor, (_, blocks) in zip(parameters,
                                                                                                      SHAPES)]
    optimizer = Muon(groups, **SETTINGS)
    for step in range(STEPS):
        for index, group in enumerate(optimizer.param_groups):
            group["params"][0].grad = None if (step, index) == (1, 2) else to_gradient(_gradient(step, index))
        optimizer.step()
    return [full(group["params"][0]).detach() for group in optimizer.param_groups]


def _distributed(rank: int, processes: int, port: int, sharded: bool, output: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=processes)
    try:
        if sharded:  # as FSDP2 holds them: DTensors sharded by rows over a 1-D mesh
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Shard, distribute_tensor

            mesh = init_device_mesh("cpu", (processes,))
            weights = _train(_parameters(), lambda t: torch.nn.Parameter(distribute_tensor(t, mesh, [Shard(0)])),
                             lambda g: distribute_tensor(g, mesh, [Shard(0)]), lambda p: p.full_tensor())
        else:  # as DDP holds them: whole on every process
            weights = _train(_parameters(), torch.nn.Parameter, lambda g: g, lambda p: p)
        torch.save(weights, f"{output}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("sharded", [False, True], ids=["ddp-whole", "fsdp2-sharded"])
def test_split_among_processes_the_update_is_one_processs_bit_for_bit(tmp_path, sharded):
    torch.set_num_threads(1)  # as each of the processes: the same kernels' sums
    alone = _train(_parameters(), torch.nn.Parameter, lambda g: g, lambda p: p)
    processes = 2
    mp.spawn(_distributed, args=(processes, _free_port(), sharded, str(tmp_path)), nprocs=processes)
    for rank in range(processes):
        weights = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for index, (split, single) in enumerate(zip(weights, alone)):
            assert torch.equal(split, single), (rank, index)
    assert not torch.equal(alone[0], _parameters()[0])  # it trained
