"""What a model costs: parameters, forward FLOPs per image, and a digest of its weights.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2). That counter has
no formulas for FFTs, so a mixer that uses them reports its own analytic count through an
``extra_flops() -> int`` method (per image, forward); :func:`count_flops` adds those and says so.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, img_size: int, in_chans: int) -> dict:
    """Forward FLOPs for one image: ``{"flops", "counted", "analytic", "analytic_from"}``."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, in_chans, img_size, img_size, device=param.device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        counted = int(counter.get_total_flops())
    finally:
        model.train(was_training)
    analytic = 0
    sources = set()
    for module in model.modules():
        extra = getattr(module, "extra_flops", None)
        if callable(extra):
            analytic += int(extra())
            sources.add(type(module).__name__)
    return {
        "flops": counted + analytic,
        "counted": counted,
        "analytic": analytic,
        "analytic_from": sorted(sources),
    }


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()  # reshape(-1): 0-d buffers (step counters) have bytes too
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
