"""Effective receptive fields: which input pixels the centre token of a layer listens to.

For a chosen block k, the ERF is ``mean_images | d (sum_c y_k[centre, c]) / d x |`` summed over the input
channels: the gradient of the centre patch token's output (summed over channels) with respect to the input
image, in absolute value, averaged over images (Luo et al. 2016, "Understanding the Effective Receptive
Field in Deep Convolutional Neural Networks", applied to a ViT's tokens). The centre patch token is used
with either head (CLS or GAP), so the maps of every mixer are comparable.

A pooling mixer's map grows a few patches per layer, a global filter's and attention's cover the image
from the first block; the sweep report shows the maps of every mixer side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mixerlab.errors import ConfigError
from mixerlab.run import atomic_path, atomic_write_text


def centre_token(model: nn.Module, num_tokens: int | None = None, layer: int | None = None) -> int:
    """Index of the centre patch token in a block's (B, N, C) sequence, after its prefix (CLS) tokens:
    ``N - h*w`` of them (a CLS token may join only at a later block: ``backbone.cls_from_layer``). The grid is
    the model's, or block ``layer``'s where the backbone's stages differ (``block_layouts()``: MetaFormer)."""
    layouts = getattr(model, "block_layouts", None)
    h, w = (layouts()[layer] if callable(layouts) and layer is not None else model.layout).grid
    prefix = model.layout.num_prefix if num_tokens is None else num_tokens - h * w
    return prefix + (h // 2) * w + w // 2


def effective_receptive_fields(
    model: nn.Module, images: torch.Tensor, layers: list[int]
) -> dict[int, np.ndarray]:
    """``images`` (B, C, H, W) -> {layer: (H, W) map}, mean over images of |grad| summed over channels."""
    depth = len(model.blocks)
    bad = [k for k in layers if not -depth <= k < depth]
    if bad:
        raise ConfigError(f"erf.layers={layers}: the model has blocks 0..{depth - 1}")
    layers = [k % depth for k in layers]
    outputs: dict[int, torch.Tensor] = {}

    def keep(k: int, out) -> None:  # a two-stream block (TNT) returns (side stream, tokens): the tokens
        outputs[k] = out[-1] if isinstance(out, tuple) else out

    hooks = [model.blocks[k].register_forward_hook(lambda _m, _i, out, k=k: keep(k, out)) for k in layers]
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)
            model.forward_features(x)
            maps = {}
            for k in layers:
                # summed over the batch: each image's gradient lands in its own slice of x.grad
                centre = centre_token(model, outputs[k].shape[1], layer=k)
                (grad,) = torch.autograd.grad(outputs[k][:, centre].float().sum(), x, retain_graph=True)
                maps[k] = grad.abs().sum(dim=1).mean(dim=0).cpu().numpy()  # (H, W)
    finally:
        for hook in hooks:
            hook.remove()
    return maps


def heat_png(heat: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    ax.imshow(heat / max(float(heat.max()), 1e-12), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)


def write_erf(model: nn.Module, dataset, layers: list[int], out_dir: Path, images: int = 64,
              device: torch.device | str = "cpu", meta: dict | None = None) -> dict:
    """Write ``out_dir/layer<k>.png`` per chosen layer, ``erf.npz`` (the maps) and ``erf.json``."""
    batch = next(iter(DataLoader(dataset, batch_size=min(images, len(dataset)), shuffle=False)))[0]
    maps = effective_receptive_fields(model, batch.to(device), layers)
    out_dir = Path(out_dir)
    files = {}
    for k, heat in maps.items():
        files[k] = out_dir / f"layer{k}.png"
        heat_png(heat, files[k], f"{(meta or {}).get('mixer') or 'model'}: block {k}")
    with atomic_path(out_dir / "erf.npz") as tmp:
        np.savez(tmp, **{f"layer{k}": v for k, v in maps.items()})
    # share of the gradient inside the centre patch: near 1 = local, small = spread over the image
    layouts = getattr(model, "block_layouts", None)

    def centre_share(k: int, v: np.ndarray) -> float:
        h, w = (layouts()[k] if callable(layouts) else model.layout).grid  # a stage's grid: its own patches
        p = batch.shape[-1] // w  # patch size
        r0, c0 = (h // 2) * p, (w // 2) * p
        return round(float(v[r0:r0 + p, c0:c0 + p].sum() / max(v.sum(), 1e-12)), 4)

    record = {**(meta or {}), "layers": sorted(maps), "images": int(batch.shape[0]),
              "files": {str(k): f.name for k, f in files.items()},
              "centre_patch_share": {str(k): centre_share(k, v) for k, v in maps.items()}}
    atomic_write_text(out_dir / "erf.json", json.dumps(record, indent=2) + "\n")
    return record
