"""Several processes under torchrun: FSDP2 for the update, data-parallel generation.

`torchrun --nproc_per_node N -m replaygrpo train ...` runs the same algorithm as one
process. Each rank generates for its contiguous share of the step's prompts (groups stay
whole, so advantages stay local), keeps its own replay buffer, and the update is one
FSDP2 step whose gradient is the single-process gradient of the whole global batch:
the loss normaliser (tokens or sequences) is the global count, and FSDP sums gradients
over ranks instead of averaging them. Without torchrun (or with one process) every
function here is a no-op or the identity and no process group exists.

Nothing here is a distributed layer of its own: torch.distributed collectives, FSDP2's
`fully_shard` and `torch.distributed.checkpoint` (sharded saves, its state_dict API) do the work.
"""
from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def init(device: torch.device) -> None:
    """Join torchrun's process group when launched by torchrun with more than one process.

    torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; NCCL carries the CUDA collectives and
    gloo the CPU ones (metrics, object gathers), so one group serves both.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("cuda:nccl,cpu:gloo")
    else:
        dist.init_process_group("gloo")
    if dist.get_rank() > 0:
        logging.getLogger("replaygrpo").setLevel(logging.WARNING)  # rank 0 tells the story


def env_from_submitit() -> None:
    """In a submitit job of several tasks (hydra/launcher=slurm or slurm_local with
    tasks_per_node > 1), set torchrun's variables from the job's, so that its tasks form one
    process group exactly as torchrun's processes do. Elsewhere, nothing."""
    if "WORLD_SIZE" in os.environ or "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # CUDA_VISIBLE_DEVICES stays as SLURM set it: `init` picks the device by LOCAL_RANK, as vLLM does
        # overwrite: a cluster may preset MASTER_ADDR/MASTER_PORT; the job's own values win
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def quiesce() -> None:
    """Before the process group goes: no collective of any rank still in flight, and no
    garbage still holding the group's tensors. Without this a gloo run aborted at exit
    (SIGABRT in gloo's threads) in about 1 run in 17 of the 2-process test."""
    if active():
        dist.barrier()
        gc.collect()


def close() -> None:
    if active():  # ours; a one-process group belongs to whoever made it (a vLLM engine)
        quiesce()
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's `obj` (or every member's of `group`), in rank order, on every rank
    (small objects: per-step stats)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def peers(size: int) -> Any:
    """The process group of this rank and its `size - 1` neighbours (ranks r..r+size-1 with
    r a multiple of `size`): a vLLM tensor-parallel group. A collective: every rank calls it."""
    group, _ = dist.new_subgroups(group_size=size)
    return group


def my_share(items: list[Any]) -> list[Any]:
    """This rank's contiguous share of a list whose length divides by the world size."""
    n = len(items) // world_size()
    return items[rank() * n:(rank() + 1) * n]


# --- the model --------------------------------------------------------------------------

def broadcast_weights(model: nn.Module) -> None:
    """Start every replica from rank 0's weights (what DDP does at construction), so a
    warm start trained separately on another node cannot make the shards disagree."""
    if active():
        for t in model.state_dict().values():
            dist.broadcast(t.data, src=0)


def shard(model: nn.Module, device: torch.device, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: each decoder layer its own group, then the root (embeddings, norm, head).

    Gradients are summed over ranks, not averaged: the loss is already normalised by the
    global token (or sequence) count, so the sum is the single-process gradient.
    `param_dtype` (bfloat16): FSDP2's MixedPrecisionPolicy, as torchtitan and verl use it:
    the float32 shards are cast before the all-gather, so the gather moves half the bytes and
    the forward computes on bf16 parameters (residual stream included); gradients are
    reduced in float32 into float32 shards. None: float32 all-gathers (autocast, if any,
    casts each matmul's inputs).
    """
    if not active():
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    layer_types = set(getattr(model, "_no_split_modules", None) or [])  # HF: e.g. Qwen3DecoderLayer
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules); cannot shard")
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM/AVG
    return model


def full_state_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) for each state-dict entry, on every rank. A sharded entry is
    all-gathered when it is reached, so at most one whole tensor is held at a time beyond
    what the caller keeps; every rank must walk the whole iterator (a collective)."""
    from torch.distributed.tensor import DTensor

    for name, t in model.state_dict().items():
        yield name, t.full_tensor() if isinstance(t, DTensor) else t


@contextmanager
def full_params(model: nn.Module) -> Iterator[None]:
    """Hold the full (unsharded) parameters on every rank while generating.

    A sharded forward all-gathers each layer's parameters, a collective every rank must
    join, and generation lengths differ across ranks. Unsharding once (FSDP2's `unshard`)
    and not resharding after each forward makes every token's forward local, so each rank
    samples at its own pace; it costs one full copy of the weights per rank for the
    duration, as a replica would. Re-sharded on exit.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        yield
        return
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:  # FSDP2's defaults: layers reshard after forward, the root does not
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


def reshard(model: nn.Module) -> None:
    """Return an FSDP2 model to its sharded parameters after a forward with no backward: the
    root keeps its parameters unsharded after a forward (FSDP2's default), and until it
    reshards they are not the tensors the optimiser and the checkpoint functions hold."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def same_micro_batch_count(plan: list[list[int]], lengths: list[int], count: int) -> list[list[int]]:
    """A micro-batch plan (`update.micro_batches`) brought to `count` entries.

    Every sharded forward and backward is a collective, so all ranks must run as many
    micro-batches. A rank with fewer splits its largest ones (still within the budget);
    if it has fewer rollouts than the count, empty entries ask for idle passes.
    """
    plan = list(plan)
    while len(plan) < count and any(len(mb) > 1 for mb in plan):
        big = max(range(len(plan)), key=lambda i: len(plan[i]) * max(lengths[j] for j in plan[i]))
        mb = plan.pop(big)
        plan += [mb[:len(mb) // 2], mb[len(mb) // 2:]]
    return plan + [[] for _ in range(count - len(plan))]


def idle_pass(model: nn.Module, ref_model: nn.Module | None, pad_id: int, device: torch.device,
              backward: bool = True) -> None:
    """A forward and backward that adds zero gradient, so this rank joins the collectives
    of a micro-batch it does not have (see `same_micro_batch_count`); `backward=False`: the
    forward only, for a no-grad pass."""
    ids = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    if not backward:
        with torch.no_grad():
            model(input_ids=ids)
        return
    logits = model(input_ids=ids).logits  # the same order of collectives as a real micro-batch:
    if ref_model is not None:  # policy forward, reference forward, backward
        with torch.no_grad():
            ref_model(input_ids=ids)
    (logits.sum() * 0.0).backward()


# --- full state: the final model, and checkpoints of one process ----------------------

def _options(**kw: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Under torchrun the unsharded weights on rank 0 (CPU), {} elsewhere (a collective);
    in one process `model.state_dict()`."""
    if not active():
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                    weights: dict[str, torch.Tensor], optim: dict[str, Any]) -> None:
    """Load rank 0's full weights and optimiser state into the sharded model (the other
    ranks pass {}); a collective. In one process, plain `load_state_dict`. (Checkpoints
    written by one process, or under torchrun before sharded checkpoints.)"""
    if not active():
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    opts = _options(broadcast_from_rank0=True)
    set_model_state_dict(model, weights, options=opts)
    set_optimizer_state_dict(model, optimizer, optim, options=opts)


# --- sharded checkpoints (torch.distributed.checkpoint) ---------------------------------

def _sharded_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Optimiser state keyed by parameter name, flat ("state.<fqn>.exp_avg"): it reshards
    # like the weights, so a checkpoint loads on another number of ranks (as torchtitan does).
    return StateDictOptions(flatten_optimizer_state_dict=True)


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Any) -> None:
    """Every rank writes its own shard of the weights and optimiser state under `path`
    (DCP's file-system writer: one file per rank, fsynced, and rank 0's `.metadata`).
    Nothing is gathered; a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_sharded_options())
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Any) -> None:
    """Read a `save_sharded` checkpoint into this (sharded or whole) model and optimiser.
    DCP reads each rank's slices from whichever files hold them, so the number of ranks
    may differ from the writer's; in one process it loads whole tensors."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    opts = _sharded_options()
    msd, osd = get_state_dict(model, optimizer, options=opts)  # the target layout (and shapes)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=opts)
