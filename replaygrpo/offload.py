"""What leaves the device between optimiser steps: the gradients (always, in `train`), and the
optimiser state in host memory (`fsdp.offload_optimizer`), as verl offloads it.

AdamW's `exp_avg` and `exp_avg_sq` (8 bytes per parameter, divided over the ranks under
FSDP2) are needed only inside `optimizer.step()`. With the switch on they live in pinned
host memory for the rest of the step (generation, the update's forwards and backwards,
the sync) and come back to the device for the step itself: the device then holds them
only beside the weights and gradients, never beside the engine's KV cache or a
micro-batch's activations. The cost is two host-device copies of the state per step.

The tensors keep their identity: each one's device storage is freed (resized to 0) and
re-allocated, so the optimiser, FSDP2's DTensor wrappers and the checkpoint code keep
their references. Anything that reads the state outside a step (checkpoints) does so
inside `resident(optimizer)`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_ATTR = "_replaygrpo_offload"


class OptimizerOffload:
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.host: dict[tuple[int, str], torch.Tensor] = {}  # (id(param), state key) -> host copy
        self.paused = False
        optimizer.register_step_pre_hook(lambda *_: None if self.paused else self.load())
        optimizer.register_step_post_hook(lambda *_: None if self.paused else self.offload())
        setattr(optimizer, _ATTR, self)

    def _local_states(self) -> Iterator[tuple[tuple[int, str], torch.Tensor]]:
        from torch.distributed.tensor import DTensor

        with torch.no_grad():  # to_local() is then the local tensor itself, not an autograd view
            for param, state in self.optimizer.state.items():
                for key, t in state.items():
                    if torch.is_tensor(t) and t.dim() > 0:  # moments, not AdamW's scalar step count
                        yield (id(param), key), t.to_local() if isinstance(t, DTensor) else t

    def offload(self) -> None:
        """Copy the state to host memory and free its device storage."""
        pending = []
        for key, t in self._local_states():
            if t.untyped_storage().size() == 0:
                continue  # already offloaded
            host = self.host.get(key)
            if host is None or host.shape != t.shape or host.dtype != t.dtype:
                host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
                self.host[key] = host
            host.copy_(t, non_blocking=t.is_cuda)
            pending.append(t)
        if pending and pending[0].is_cuda:
            torch.cuda.synchronize()  # the copies are done before the storage goes
        for t in pending:
            if not t.untyped_storage().resizable():  # e.g. read by torch.load: give it storage of its own
                with torch.no_grad():
                    t.set_(torch.empty(0, dtype=t.dtype, device=t.device).resize_(t.shape))
            t.untyped_storage().resize_(0)

    def load(self) -> None:
        """Re-allocate each offloaded tensor's device storage and copy the state back."""
        for key, t in self._local_states():
            if t.untyped_storage().size() == 0:
                t.untyped_storage().resize_(t.numel() * t.element_size())
                t.copy_(self.host[key], non_blocking=t.is_cuda)


def free_gradients_after_step(optimizer: torch.optim.Optimizer) -> None:
    """Set the gradients to None as soon as the step has used them: nothing reads them before
    the next update, and otherwise they (4 bytes per parameter, sharded) stay on the device
    through generation and the sync, beside the engine's KV cache."""
    optimizer.register_step_post_hook(lambda opt, *_: opt.zero_grad(set_to_none=True))


def offload_optimizer(optimizer: torch.optim.Optimizer) -> OptimizerOffload:
    """Keep `optimizer`'s state in host memory except during its steps (see the module docstring)."""
    return OptimizerOffload(optimizer)


@contextmanager
def resident(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """The state on the device for the block (a checkpoint's save or load); offloaded again after.
    A no-op for an optimiser without offload."""
    off: OptimizerOffload | None = getattr(optimizer, _ATTR, None)
    if off is None:
        yield
        return
    off.load()
    off.paused = True  # e.g. DCP initialising an empty state with a step: no offload halfway
    try:
        yield
    finally:
        off.paused = False
        off.offload()
