"""Muon for the blocks' matrices, on one process or many (DDP, FSDP2), each matrix orthogonalised by one process.

The update is torch.optim.Muon's (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"),
operation for operation: Nesterov momentum, Newton-Schulz orthogonalisation, decoupled decay, the rate scaled by
sqrt(max(1, rows / columns)). In bf16 it gives torch's bits (tested). Hand-written because torch's Muon
orthogonalises whole, unsharded tensors, on every process, in bf16 only; this one

- treats a (k n, m) matrix in a group with `row_blocks: k` as k matrices (the fused q/k/v weight);
- splits the Newton-Schulz work among the processes: each matrix has one owner (chosen by cost, the same on every
  process), which orthogonalises it; the results are shared in one collective per step (an all-gather under DDP);
- takes FSDP2's sharded parameters (DTensors, sharded by rows): each matrix's update is sent whole to its owner and
  its result sent back in shards, two all-to-alls per step, while the momentum stays sharded;
- iterates in the precision the device multiplies fastest (`newton_schulz_dtype`).

Every process computes the same numbers for a matrix whoever orthogonalises it, so the split, the sharding and the
number of processes change no bit of the update (tested against one process).
"""

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

# torch.optim.Muon's defaults (Keller Jordan's quintic coefficients, 5 steps).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
# On a CPU a bf16 product is slower than an fp32 one for small matrices and faster for large ones; the crossover was
# at a smaller side of 128 on this project's AMD EPYC with AVX512-BF16 (bf16 / fp32 time for 5 steps: 1.33x at 96,
# 0.98x at 128, 0.49x at 256, 0.43x at 512; benchmarks/RESULTS.md). GPUs multiply bf16 fastest at every size.
CPU_BF16_MIN_SIDE = 128


def newton_schulz_dtype(device: torch.device, shape: tuple[int, int]) -> torch.dtype:
    """The precision of the iteration for a matrix of `shape` on `device`, decided once per matrix."""
    if device.type == "cpu" and min(shape) < CPU_BF16_MIN_SIDE:
        return torch.float32
    return torch.bfloat16


def newton_schulz(update: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = NS_EPS) -> torch.Tensor:
    """The quintic Newton-Schulz iteration that takes a matrix to an approximately orthogonal one, in `dtype`: the
    arithmetic of torch.optim.Muon's, whose iteration is bf16 only. Returns a new (rows, columns) tensor in dtype."""
    a, b, c = coefficients
    x = update.to(dtype, copy=True)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T  # (columns, rows): the Gram matrix below is then the smaller one
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        gram_update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, gram_update, x, beta=a)
    return x.T if transposed else x


def orthogonalise(update: torch.Tensor, row_blocks: int) -> torch.Tensor:
    """Newton-Schulz of each of the `row_blocks` stacked matrices of a full update, stacked again."""
    blocks = update.chunk(row_blocks)  # (k n, m) -> k x (n, m)
    dtype = newton_schulz_dtype(update.device, blocks[0].shape)
    return torch.cat([newton_schulz(block, dtype) for block in blocks])


def rate_scale(shape: tuple[int, int]) -> float:
    """torch.optim.Muon's default ("original") scaling of the rate for one matrix's shape."""
    rows, columns = shape
    return math.sqrt(max(1, rows / columns))


def owners(costs: list[float], processes: int) -> list[int]:
    """The process that orthogonalises each matrix: the costliest first, each to the least loaded process so far
    (ties to the lowest rank), so every process computes the same plan from the same list."""
    load = [0.0] * processes
    owner = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        process = min(range(processes), key=lambda p: (load[p], p))
        owner[index] = process
        load[process] += costs[index]
    return owner


def row_shards(rows: int, processes: int) -> list[tuple[int, int]]:
    """(start, end) of each process's rows under Shard(0): torch.chunk's split, the last processes possibly empty."""
    per_process = -(-rows // processes)
    return [(min(p * per_process, rows), min((p + 1) * per_process, rows)) for p in range(processes)]


class Muon(torch.optim.Optimizer):
    """Muon, see the module docstring. Group options as torch.optim.Muon's (lr, weight_decay, momentum, nesterov),
    plus `row_blocks`. The state is torch's: one `momentum_buffer` per parameter (sharded as the parameter is)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, row_blocks: int = 1):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                                  "row_blocks": row_blocks})
        for group in self.param_groups:
            for name, parameter in zip(group.get("param_names", [""] * len(group["params"])), group["params"]):
                if parameter.dim() != 2:
                    raise ValueError(f"Muon orthogonalises matrices, and {name} has shape {tuple(parameter.shape)}: "
                                     f"give it to AdamW")
                if parameter.shape[0] % group["row_blocks"]:
                    raise ValueError(f"{name} has {parameter.shape[0]} rows, which do not split into "
                                     f"{group['row_blocks']} blocks")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []  # (parameter, group, this process's part of its update)
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:  # left untouched, as torch's optimizers leave it (the step guard's skip)
                    continue
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter.grad, memory_format=torch.preserve_format)
                gradient, buffer = local(parameter.grad), local(state["momentum_buffer"])
                buffer.lerp_(gradient, 1 - group["momentum"])
                update = gradient.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                work.append((parameter, group, update))
        results = self._orthogonalised(work)
        for (parameter, group, _), result in zip(work, results):
            rows, columns = parameter.shape
            weights = local(parameter)
            weights.mul_(1 - group["lr"] * group["weight_decay"])
            weights.add_(result, alpha=-group["lr"] * rate_scale((rows // group["row_blocks"], columns)))
        return loss

    def _orthogonalised(self, work: list) -> list[torch.Tensor]:
        """Each update orthogonalised, as this process holds it (whole, or its rows under FSDP)."""
        sharded = [isinstance(parameter, DTensor) for parameter, _, _ in work]
        if any(sharded) and not all(sharded):
            raise ValueError("Muon's matrices must be all sharded (FSDP) or all whole")
        if all(sharded) and work:
            return self._orthogonalised_sharded(work)
        processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if processes == 1:
            return [orthogonalise(update, group["row_blocks"]) for _, group, update in work]
        return self._orthogonalised_replicated(work, processes)

    @staticmethod
    def _plan(work: list, processes: int) -> list[int]:
        """Owners by Newton-Schulz cost: per block, 5 steps of products of a (n, m) matrix with n <= m, ~ n * n * m."""
        costs = []
        for parameter, group, _ in work:
            rows, columns = parameter.shape[0] // group["row_blocks"], parameter.shape[1]
            costs.append(group["row_blocks"] * min(rows, columns) ** 2 * max(rows, columns))
        return owners(costs, processes)

    def _orthogonalised_replicated(self, work: list, processes: int) -> list[torch.Tensor]:
        """DDP: every process holds every update whole. Each orthogonalises its own; one all-gather of the results
        (flattened, padded to the longest process's) gives every process all of them."""
        rank = dist.get_rank()
        owner = self._plan(work, processes)
        mine = {index: orthogonalise(update, group["row_blocks"])
                for index, (_, group, update) in enumerate(work) if owner[index] == rank}
        sizes = [sum(update.numel() for index, (_, _, update) in enumerate(work) if owner[index] == process)
                 for process in range(processes)]
        sent = torch.zeros(max(sizes), dtype=result_dtype(work), device=work[0][2].device)
        if mine:
            flat = torch.cat([mine[index].reshape(-1) for index in sorted(mine)])
            sent[: flat.numel()] = flat
        gathered = [torch.empty_like(sent) for _ in range(processes)]
        dist.all_gather(gathered, sent)
        offsets = [0] * processes
        results = []
        for index, (_, _, update) in enumerate(work):
            process = owner[index]
            start = offsets[process]
            results.append(gathered[process][start : start + update.numel()].view(update.shape))
            offsets[process] += update.numel()
        return results

    def _orthogonalised_sharded(self, work: list) -> list[torch.Tensor]:
        """FSDP2: each process holds rows of each update. An all-to-all sends every process's rows of a matrix to
        its owner, which orthogonalises the whole matrix; a second all-to-all sends each process its rows of the
        result. Each element travels to its owner and back, once."""
        mesh = work[0][0].device_mesh
        for parameter, _, _ in work:
            if parameter.device_mesh.ndim != 1 or tuple(parameter.placements) != (Shard(0),):
                raise ValueError(f"Muon takes FSDP2's default sharding (rows, one mesh dimension); a parameter is "
                                 f"sharded as {parameter.placements} on a {parameter.device_mesh.ndim}-D mesh")
        group, processes = mesh.get_group(), mesh.size()
        rank = mesh.get_local_rank()
        owner = self._plan(work, processes)
        shards = [row_shards(parameter.shape[0], processes) for parameter, _, _ in work]
        for (parameter, _, update), rows in zip(work, shards):
            start, end = rows[rank]
            assert update.shape[0] == end - start, "FSDP2 sharded rows otherwise than torch.chunk"
        columns = [parameter.shape[1] for parameter, _, _ in work]
        device, update_dtype = work[0][2].device, work[0][2].dtype

        # 1. My rows of every matrix, to the matrix's owner.
        sent = [[update.reshape(-1) for index, (_, _, update) in enumerate(work) if owner[index] == process]
                for process in range(processes)]
        received_sizes = [sum((shards[i][source][1] - shards[i][source][0]) * columns[i]
                              for i in range(len(work)) if owner[i] == rank) for source in range(processes)]
        received = all_to_all(sent, received_sizes, update_dtype, device, group)
        # Reassemble my matrices from every source's rows, in row order.
        pieces = {index: [] for index in range(len(work)) if owner[index] == rank}
        for source, flat in enumerate(received):
            offset = 0
            for index in pieces:
                start, end = shards[index][source]
                pieces[index].append(flat[offset : offset + (end - start) * columns[index]].view(-1, columns[index]))
                offset += (end - start) * columns[index]
        mine = {index: orthogonalise(torch.cat(rows), work[index][1]["row_blocks"]) for index, rows in pieces.items()}

        # 2. Each process's rows of my results, back to it.
        sent = [[mine[index][shards[index][target][0] : shards[index][target][1]].reshape(-1) for index in mine]
                for target in range(processes)]
        received_sizes = [sum((shards[i][rank][1] - shards[i][rank][0]) * columns[i]
                              for i in range(len(work)) if owner[i] == source) for source in range(processes)]
        received = all_to_all(sent, received_sizes, result_dtype(work), device, group)
        offsets = [0] * processes
        results = []
        for index, (_, _, update) in enumerate(work):
            source = owner[index]
            results.append(received[source][offsets[source] : offsets[source] + update.numel()].view(update.shape))
            offsets[source] += update.numel()
        return results


def result_dtype(work: list) -> torch.dtype:
    """The dtype one collective carries the orthogonalised updates of a step in: the iteration's, so nothing is lost
    (float32 if matrices iterate in several: bf16 widens to it exactly, and the update adds in float32 anyway)."""
    dtypes = {newton_schulz_dtype(update.device, (parameter.shape[0] // group["row_blocks"], parameter.shape[1]))
              for parameter, group, update in work}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def all_to_all(sent: list[list[torch.Tensor]], received_sizes: list[int], dtype: torch.dtype, device: torch.device,
               group) -> list[torch.Tensor]:
    """One all_to_all_single: `sent[p]` (flat tensors) goes to process p; returns what each process sent here."""
    flat_sent = [torch.cat(pieces).to(dtype) if pieces else torch.empty(0, dtype=dtype, device=device)
                 for pieces in sent]
    output = torch.empty(sum(received_sizes), dtype=dtype, device=device)
    dist.all_to_all_single(output, torch.cat(flat_sent), output_split_sizes=received_sizes,
                           input_split_sizes=[piece.numel() for piece in flat_sent], group=group)
    return list(output.split(received_sizes))


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: a DTensor's local shard (a view: writing it writes the parameter)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
