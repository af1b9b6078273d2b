"""Augmentation on whole batches on the training device: what the FFCV path does after decoding.

FFCV decodes, random-resized-crops and flips in compiled code and hands over uint8 batches; the rest of
the DeiT recipe runs here, per sample but vectorised over the batch, on the GPU when there is one:

    uint8 (B, 3, r, r) -> [0, 1] -> resize to img_size (progressive resizing) -> 3-Augment -> colour jitter
    -> normalise -> random erasing (timm's, DeiT's 0.25 pixel mode)       (Mixup/CutMix: the recipe)

**3-Augment** (DeiT III, Touvron et al. 2022, facebookresearch/deit ``augment.py``): each image gets one of
{grayscale, solarize, Gaussian blur with sigma ~ U(0.1, 2)}, then colour jitter 0.3 (brightness, contrast,
saturation). DeiT III reports it matches or beats RandAugment for ViTs; unlike RandAugment's 14 PIL ops
it vectorises in a few tensor ops, so it costs the GPU microseconds instead of costing the CPU the speed
FFCV exists for. The folder pipeline can use the same policy (``data.augment.auto_augment=3a``, timm's
PIL version) for like-for-like comparisons. One simplification: the jitter's three factors are applied
in a fixed order (torchvision draws a random order per image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data.random_erasing import RandomErasing
from torch import nn

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision
BLUR_SIGMA = (0.1, 2.0)  # DeiT III's GaussianBlur radius range


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own sigma (B,): one separable grouped convolution."""
    b, c, h, w = x.shape
    radius = int(torch.ceil(3 * sigma.max()).item()) if b else 0
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


class ThreeAugment(nn.Module):
    """DeiT III's 3-Augment on a [0, 1] batch: one of grayscale / solarize / blur per image, then jitter.

    Each op runs on its own third of the batch only (index_select/index_copy), so the cost is one pass
    over the batch, not three.
    """

    def __init__(self, color_jitter: float = 0.3) -> None:
        super().__init__()
        self.color_jitter = color_jitter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)  # the ops below work in place on this copy
        choice = torch.randint(0, 3, (x.shape[0],), device=x.device)
        gray, solar, blur = ((choice == k).nonzero().flatten() for k in range(3))
        if gray.numel():
            x.index_copy_(0, gray, grayscale(x.index_select(0, gray)).expand(-1, 3, -1, -1))
        if solar.numel():
            part = x.index_select(0, solar)
            x.index_copy_(0, solar, torch.where(part >= 128 / 255, 1.0 - part, part))  # PIL solarize(128)
        if blur.numel():
            sigma = torch.empty(blur.numel(), device=x.device).uniform_(*BLUR_SIGMA)
            x.index_copy_(0, blur, gaussian_blur(x.index_select(0, blur), sigma))
        return self.jitter(x) if self.color_jitter > 0 else x

    def jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation factors ~ U(1 - j, 1 + j) per image (torchvision's definitions),
        in place."""
        b = x.shape[0]
        j = self.color_jitter
        factors = torch.empty(3, b, 1, 1, 1, device=x.device, dtype=x.dtype).uniform_(1 - j, 1 + j)
        x.mul_(factors[0]).clamp_(0, 1)
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x.sub_(mean).mul_(factors[1]).add_(mean).clamp_(0, 1)
        gray = grayscale(x)
        return x.sub_(gray).mul_(factors[2]).add_(gray).clamp_(0, 1)


class BatchTransform(nn.Module):
    """uint8 batch from the loader -> normalised float batch of ``img_size``, augmented when ``train``."""

    def __init__(
        self,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        three_augment: bool = True,
        color_jitter: float = 0.3,
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.three_augment = ThreeAugment(color_jitter) if (train and three_augment) else None
        self.re_prob = re_prob if train else 0.0
        self.re_mode, self.re_count = re_mode, re_count

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        if x.shape[-2:] != (self.img_size, self.img_size):
            # progressive resizing decodes smaller images; the backbone's token grid is fixed
            x = F.interpolate(
                x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0, 1)
        if self.three_augment is not None:
            x = self.three_augment(x)
        x = x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))
        if self.re_prob > 0:
            # timm's RandomErasing is DeiT's; on a 4-D batch it erases each image independently
            x = RandomErasing(self.re_prob, mode=self.re_mode, max_count=self.re_count, device=x.device)(x)
        return x
