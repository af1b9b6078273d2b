"""Gated positional self-attention, GPSA (d'Ascoli et al. 2021, ConViT, arXiv 2103.10697;
facebookresearch/convit ``convit.py`` ``GPSA``; the same math in ``timm.models.convit.GPSA``, reused here).

    content_h  = softmax(q_h k_h^T / sqrt(d))                          (B, H, n, n), n = h*w patches
    position_h = softmax(v_pos,h . r_ij)   r_ij = (dx, dy, dx^2+dy^2)  offset of patch j from patch i
    A_h = renormalise((1 - sigmoid(lambda_h)) * content_h + sigmoid(lambda_h) * position_h)
    out = W_o (A v)                       q, k from W_qk; v = W_v x; v_pos = Linear(3, H)

Local initialisation (``reset_mixer_parameters``, run after the backbone's trunc-normal init as ConViT runs
``local_init`` after its own): W_v = identity and, for the first floor(sqrt(H))^2 heads,
v_pos,h = alpha (2 dx_h, 2 dy_h, -1) on a centred grid of offsets; lambda = 1. The gating lambda carries
``_optim = {"weight_decay": 0}``: ConViT trains with timm's ``create_optimizer``, which keeps 1-D parameters
(lambda is (H,)) out of weight decay; the mark makes that explicit for the optimizer groups.

The positional scores are defined on the square patch grid only, so the CLS token (ConViT adds it after the
last GPSA layer: ``backbone.cls_from_layer``) is passed through unchanged when a GPSA layer receives it.
:class:`ConViTMHSA` is ConViT's plain attention for the layers after ``local_up_to_layer`` (explicit softmax,
as timm's ``convit.MHSA``), so the ``convit_*`` presets reproduce timm's logits exactly.
"""

from __future__ import annotations

import torch
from timm.models.convit import GPSA as TimmGPSA
from timm.models.convit import MHSA as TimmMHSA

from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads, mark_optim, split_prefix


class GPSA(TimmGPSA):
    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 4,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        layer_index: int = 0,
        num_layers: int = 1,
    ) -> None:
        check_heads(dim, num_heads)
        h, w = layout.grid
        if h != w:
            raise ConfigError(
                f"mixer=gpsa needs a square patch grid (its relative positions assume one) but the backbone "
                f"gives {h}x{w}: make data.img_size / backbone.patch_size square"
            )
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop, locality_strength)
        self.layout = layout
        self.rel_indices = self.get_rel_indices(layout.num_patches)  # (1, n, n, 3), a non-persistent buffer
        mark_optim(self.gating_param, weight_decay=0.0)

    def reset_mixer_parameters(self) -> None:
        self.local_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = split_prefix(x, self.layout)  # (B, P, C), (B, n, C)
        out = super().forward(patches)
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out


class ConViTMHSA(TimmMHSA):
    """ConViT's non-local layers: softmax(q k^T / sqrt(d)) v over every token, CLS included.

    The presets select it on top of ``conf/mixer/attention.yaml``, whose SSA, ``head_dim`` and ``proj_bias``
    keys arrive too: only their defaults are accepted (this explicit-softmax port has no subsampled mode,
    and ConViT's heads follow ``num_heads`` with a biased projection).
    """

    def __init__(
        self,
        dim: int,
        layout: TokenLayout,
        num_heads: int = 4,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        layer_index: int = 0,
        num_layers: int = 1,
        ssa: dict | None = None,
        seed: int = 0,
        head_dim: int | None = None,
        proj_bias: bool = True,
    ) -> None:
        check_heads(dim, num_heads)
        if ssa:
            raise ConfigError(f"mixer.ssa={ssa} is not available in ConViT's MHSA layers: set mixer.ssa=null")
        if head_dim is not None or not proj_bias:
            raise ConfigError("mixer.head_dim and mixer.proj_bias=false are not available in ConViT's MHSA "
                              "layers: set mixer.head_dim=null mixer.proj_bias=true")
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
