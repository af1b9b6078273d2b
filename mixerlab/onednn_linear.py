"""fp32 ``nn.Linear`` on the CPU through oneDNN instead of the BLAS torch links (MKL).

On the 2-core AMD EPYC (Zen 5, AVX-512) this project is developed on, MKL's sgemm runs its AVX2 code
(about 85 GFLOP/s per core) while oneDNN, which dispatches on the instruction set rather than the vendor,
runs AVX-512 (about 175 GFLOP/s): a ViT's Linear layers, 80% of a DeiT-S training step, train about 1.85x
faster forward + backward (BENCHMARKS.md, "Training performance"). The three GEMMs of a Linear layer

    y = x W^T + b        dx = dy W        dW = dy^T x        db = sum(dy)

each run as ``torch.ops.mkldnn._linear_pointwise`` (the op inductor uses for its CPU linear fusions), in
fp32 with fp32 accumulation: the results differ from MKL's only in summation order (relative 1e-6).
Layers keep their class's parameters, so state dicts, checkpoints and ``weights_sha256`` do not change.
Anything other than fp32 on the CPU without autocast (CUDA, bf16 autocast, which already runs on oneDNN,
float64) takes ``nn.Linear``'s own path.
"""

from __future__ import annotations

from math import prod

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import register_flop_formula


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T [+ bias] -> (M, N) on oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


if onednn_linear_available():

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        """So ``torch.utils.flop_counter`` counts these GEMMs as it counts ``aten.addmm``."""
        return 2 * prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


class OneDNNLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _gemm(x, weight, bias)  # (M, K) -> (M, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _gemm(grad, weight.t().contiguous())  # (M, N) @ (N, K)
        if ctx.needs_input_grad[1]:
            grad_w = _gemm(grad.t(), x.t())  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU forward and backward run on oneDNN; same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type != "cpu"
            or x.dtype != torch.float32
            or not x.numel()
            or torch.is_autocast_enabled("cpu")
        ):
            return super().forward(x)
        y = OneDNNLinearFunction.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def use_onednn_linear(model: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` in ``model`` into :class:`OneDNNLinear` in place; returns how many."""
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
            swapped += 1
    return swapped
