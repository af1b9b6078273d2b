"""What a model costs: parameters, forward FLOPs per image, a training step's peak tensor memory, and a digest
of its weights. The one place where FLOPs are defined.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: dense, shape-based formulas, a multiply-add
counts 2, elementwise work (activations, softmax, norms, complex products) counts 0. Its registry differs
between torch releases: the CPU's fused attention (``aten._scaled_dot_product_flash_attention_for_cpu``) and
the FFTs have no formula in some, so the attention matmuls and the spectral mixers' transforms would count 0
there, and where a release has one it may count another thing (torch 2.15's fused CPU attention backward
counts the forward's recomputation: 5 matmuls instead of 4). At import this module registers its formula for
every op below that the installed torch has, replacing torch's own where there is one
(:data:`FORMULA_SOURCE` says which), so the same model counts the same FLOPs on every torch:

* attention, every fused variant (CPU flash, flash, memory-efficient, cuDNN, the "overrideable" kernel,
  MPS math) and its backward: ``softmax(q kᵀ) v`` = two batched matmuls, ``4·b·h·n_q·n_k·d`` forward,
  ``8·b·h·n_q·n_k·d`` backward (model FLOPs: a kernel's recomputation is not counted, as in MFU).
  A mask never lowers the count (an upper bound, as torch's own formulas);
  the decomposed math path runs as ``bmm`` and counts the same, so the figure does not depend on which
  backend the dispatcher picks.
* FFTs: ``5·n·log₂n`` real FLOPs per complex transform of ``n = ∏`` transformed lengths, half for the real
  transforms (``_fft_r2c``, ``_fft_c2r``), times the number of transforms in the batch; normalisation is
  elementwise and not counted.

A mixer with its own custom operator registers that operator's formula beside its definition
(``register_flop_formula``), which is how torch attaches a FLOP formula to a custom op.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten


# ---------------------------------------------------------------------------------------------- formulas
def attention_flops(query_shape, key_shape, value_shape) -> int:
    """``q kᵀ`` then ``p v``: batched matmuls (n_q, d) x (d, n_k) and (n_q, n_k) x (n_k, d_v) per head."""
    *batch, n_q, d = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    heads = math.prod(batch)
    return 2 * heads * n_q * n_k * d + 2 * heads * n_q * n_k * d_v


def attention_backward_flops(query_shape, key_shape, value_shape) -> int:
    """Gradients of v, of the probabilities, of q and of k: four matmuls of the forward's sizes."""
    return 2 * attention_flops(query_shape, key_shape, value_shape)


def fft_flops(transform_lengths: Iterable[int], numel: int, real: bool) -> int:
    """``numel / n`` transforms of ``n = ∏ lengths`` points, 5 n log₂ n each (complex), half when real."""
    n = math.prod(transform_lengths)
    if n <= 1:
        return 0
    per_transform = 5 * n * math.log2(n) / (2 if real else 1)
    return int(per_transform * (numel // n))


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw) -> int:
    return attention_backward_flops(query_shape, key_shape, value_shape)


def _fft_r2c(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return fft_flops([self_shape[d] for d in dim], math.prod(self_shape), real=True)


def _fft_c2r(self_shape, dim, normalization, last_dim_size, *args, out_shape=None, **kwargs) -> int:
    return fft_flops([out_shape[d] for d in dim], math.prod(out_shape), real=True)


def _fft_c2c(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return fft_flops([self_shape[d] for d in dim], math.prod(self_shape), real=False)


# op name (looked up on torch.ops.aten; absent in some releases) -> formula over shapes
FORMULAS: dict[str, Callable[..., int]] = {
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward,
    "_scaled_dot_product_flash_attention": _sdpa_forward,
    "_scaled_dot_product_flash_attention_backward": _sdpa_backward,
    "_scaled_dot_product_efficient_attention": _sdpa_forward,
    "_scaled_dot_product_efficient_attention_backward": _sdpa_backward,
    "_scaled_dot_product_cudnn_attention": _sdpa_forward,
    "_scaled_dot_product_cudnn_attention_backward": _sdpa_backward,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa_forward,
    "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward,
    "_scaled_dot_product_attention_math_for_mps": _sdpa_forward,
    "_fft_r2c": _fft_r2c,
    "_fft_c2r": _fft_c2r,
    "_fft_c2c": _fft_c2c,
}


def _register() -> dict[str, str]:
    """Register :data:`FORMULAS` for every op this torch has; ``{op: "added" | "replaces torch's"}``."""
    source = {}
    for name, formula in FORMULAS.items():
        op = getattr(aten, name, None)
        if op is None:
            continue  # not in this release: nothing dispatches to it
        replaced = flop_counter.flop_registry.pop(op, None) is not None
        register_flop_formula(op)(formula)
        source[name] = "replaces torch's" if replaced else "added"
    return source


FORMULA_SOURCE: dict[str, str] = _register()
REGISTERED: tuple[str, ...] = tuple(FORMULA_SOURCE)


# ---------------------------------------------------------------------------------------------- counting
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_module_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs of ``module(*inputs)`` (no gradients), with this module's formulas in the registry."""
    return int(flop_breakdown(module, *inputs)[0])


def flop_breakdown(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, dict[str, int]]:
    """(total forward FLOPs, FLOPs per op name) of ``module(*inputs)`` under ``torch.no_grad``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    counts = counter.get_flop_counts().get("Global", {})
    per_op = {str(op).rsplit(".", 1)[-1]: int(n) for op, n in counts.items()}
    return int(counter.get_total_flops()), per_op


def count_flops(model: nn.Module, img_size: int, in_chans: int) -> dict:
    """Forward FLOPs for one image: ``{"flops", "by_formula", "note"}``.

    ``by_formula`` holds the FLOPs of the ops counted by a formula this module registered (the installed
    torch has none for them), ``note`` says so in words (None when there are none)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, in_chans, img_size, img_size, device=param.device)
        total, per_op = flop_breakdown(model, x)
    finally:
        model.train(was_training)
    by_formula = {op: n for op, n in per_op.items() if op in REGISTERED and n}
    note = None
    if by_formula:
        note = (f"{', '.join(sorted(by_formula))} counted by mixerlab.costs formulas (this torch has none): "
                "attention 4·b·h·n_q·n_k·d, FFT 5·n·log2(n) per complex transform, half for real ones")
    return {"flops": total, "by_formula": by_formula, "note": note}


# ---------------------------------------------------------------------------------------------- memory
class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of the live tensor storages on one device while the mode is active.

    Every op's outputs are seen here; each new storage is added once (views and in-place results share
    their input's storage) and subtracted when it is freed (a weakref finalizer on the storage), so the
    figure is what the tensors need — parameters, gradients, optimizer state, activations saved for
    backward, temporaries — and nothing of the interpreter, the allocator's caches or the libraries, which
    a process's RSS is dominated by. Written here rather than taken from torch's memory tools: the profiler
    reports allocations per op, not live totals, and ``torch.distributed._tools.mem_tracker`` is private.
    """

    def __init__(self, device: torch.device, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.device = torch.device(device)
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0
        for tensor in existing:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != self.device.type or tensor.is_meta:
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (nested, sparse...)
            return
        if storage in self._live:
            return
        nbytes = storage.nbytes()
        self._live[storage] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def step_memory(
    model: nn.Module,
    batch: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """Peak tensor memory of one training step (forward, backward, optimizer step) of a *copy* of ``model``
    on ``batch``'s device: ``{"step_memory_mb", "step_memory_method", "step_memory_batch"}``.

    The copy, its optimizer and its gradients are thrown away, and the random state is restored, so the
    run trains exactly as without the measurement. ``forward_context``: the run's autocast, if any. On CUDA:
    ``torch.cuda.max_memory_allocated`` above the allocation before the copy, after a peak reset; elsewhere:
    :class:`LiveTensorMemory` over the step."""
    device = batch.device
    cuda = device.type == "cuda"
    devices = [device] if cuda else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if cuda else "cuda"):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            twin = copy.deepcopy(model).to(device).train()
            optimizer = make_optimizer(twin)
            _one_step(twin, optimizer, batch, targets, loss_fn, forward_context)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
            method = ("cuda: torch.cuda.max_memory_allocated over one training step of a model copy "
                      "(peak reset before it)")
        else:
            twin = copy.deepcopy(model).to(device).train()
            optimizer = make_optimizer(twin)
            existing = [*twin.parameters(), *twin.buffers(), batch, targets, *_optimizer_tensors(optimizer)]
            with LiveTensorMemory(device, existing) as tracker:
                _one_step(twin, optimizer, batch, targets, loss_fn, forward_context)
            peak = tracker.peak
            method = (f"{device.type}: peak of live tensor storages over one training step of a model copy "
                      "(TorchDispatchMode: parameters, gradients, optimizer state, activations)")
    del twin, optimizer
    return {"step_memory_mb": round(peak / 2**20, 2), "step_memory_method": method,
            "step_memory_batch": int(batch.shape[0])}


def _one_step(model, optimizer, batch, targets, loss_fn, forward_context) -> None:
    with forward_context():
        logits = model(batch)
    loss = loss_fn(logits.float(), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- identity
def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1): 0-d buffers (BatchNorm's num_batches_tracked) have no byte view of their own
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
