"""Data parallelism under torchrun: this rank, and the collectives the loop needs (gradients, a
float, the scores), no-ops in one process. Written out instead of DistributedDataParallel: with a
frozen LLM only a few tensors train, and loop.py shows the one collective that training needs."""
import os
import re

import torch
import torch.distributed as dist


def rank_world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def is_main():
    return rank_world()[0] == 0


def say(*a):
    if is_main():  # progress lines of long runs: rank 0 only, flushed
        print(*a, flush=True)


def barrier():
    if rank_world()[1] > 1:
        dist.barrier()


def init_distributed(device):
    """Under torchrun: join the process group (NCCL on GPUs, gloo on CPU); returns this rank's device."""
    world, rank, local = (os.environ.get(k, d) for k, d in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")))
    if not all(re.fullmatch(r"0|[1-9][0-9]{0,3}", v) for v in (world, rank, local)) or int(rank) >= int(world) \
            or int(local) >= int(world):  # (torchrun sets them; a bad one failed in int() or hung the group)
        raise ValueError(f"WORLD_SIZE={world[:20]!r} RANK={rank[:20]!r} LOCAL_RANK={local[:20]!r}: expected "
                         "integers with 0 <= RANK, LOCAL_RANK < WORLD_SIZE (as torchrun sets them)")
    if int(world) <= 1:
        return device
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    return device


def all_reduce_grads(params):
    """Sum the gradients over ranks: each rank's loss is weighted by its share of the global batch."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def all_sum(x):
    if rank_world()[1] == 1:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def gather_scores(local):
    """{row position: score} from every rank -> one dict (every rank gets all of it)."""
    if rank_world()[1] == 1:
        return local
    parts = [None] * rank_world()[1]
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}
