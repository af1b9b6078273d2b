"""TNT (Transformer in Transformer; Han et al., NeurIPS 2021, arXiv 2103.00112): a two-stream backbone whose
patch-stream mixer is any mixer of the contract (``backbone=tnt``).

    image (B, 3, H, W) -> per-patch conv (k 7, stride s) -> pixels (B*n, p, c) + pixel_pos (one for all)
                       -> flatten p*c -> LN -> Linear -> LN -> patches (B, n, D) [+ CLS] + patch_pos
      -> L blocks, each:
           pixels += attn_in(LN(pixels)); pixels += mlp_in(LN(pixels))   attention among a patch's p pixels
           patches[grid] += LN(Linear_noBias(LN(flatten(pixels))))       the pixel stream feeds its patch
           patches += mixer(LN(patches)); patches += MLP(LN(patches))    the outer (patch) mixer
      -> LayerNorm -> CLS token | mean of the patches | LAMA pooling -> Linear

The pixel stream is state carried from block to block, so TNT is not a mixer but a backbone; its outer
mixer is built through the mixer contract (``factory(dim, layout, layer_index, num_layers)``), so
``mixer=attention mixer.qkv_bias=false`` is timm's ``tnt_s_patch16_224`` and ``mixer=<any>`` is the ablation
TNT invites. The CLS token never receives the pixel stream (only through the outer mixer), as in timm.

Reused from timm (``timm.models.tnt``): ``PixelEmbed`` (the non-legacy per-patch conv, zero padding at every
patch border) and the inner ``Attention`` (separate ``qk`` and ``v``, its state-dict names). Hand-written:
the block, because timm's ``Block`` builds its outer attention itself and the outer mixer here comes from
the contract; and the model, for the contract's layout, the ``cls | gap | lama`` read-outs and the project's
per-block API (``blocks[i].mixer``, ``no_weight_decay``, ``group_matcher``). Parameter and module names follow
timm's (the outer ``attn_out`` is our ``mixer``), so timm's state dicts load through ``init.checkpoint``
(mixerlab/pretrained.py, source ``timm_tnt``: ``qk`` and ``v`` rows concatenated into ``qkv``).
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.tnt import Attention as InnerAttention
from timm.models.tnt import PixelEmbed
from torch import nn

from mixerlab.backbone import HEADS, MixerFactory, classifier_head, mixers_no_weight_decay, read_out
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, check_heads


class TNTBlock(nn.Module):
    """One TNT block: the inner (pixel) sub-blocks, the fusion into the patch tokens, the outer sub-blocks."""

    def __init__(
        self,
        dim: int,
        inner_dim: int,
        num_pixel: int,
        mixer: nn.Module,
        inner_heads: int = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        norm = lambda width: nn.LayerNorm(width, eps=norm_eps)  # noqa: E731
        self.norm_in = norm(inner_dim)
        self.attn_in = InnerAttention(inner_dim, inner_dim, num_heads=inner_heads, proj_drop=proj_drop)
        self.norm_mlp_in = norm(inner_dim)
        self.mlp_in = Mlp(inner_dim, 4 * inner_dim, drop=proj_drop)  # ratio 4 hard-coded, as timm
        self.norm1_proj = norm(num_pixel * inner_dim)
        self.proj = nn.Linear(num_pixel * inner_dim, dim, bias=False)
        self.norm2_proj = norm(dim)
        self.norm_out = norm(dim)
        self.mixer = mixer
        self.norm_mlp = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, pixels: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = pixels + self.drop_path(self.attn_in(self.norm_in(pixels)))  # (B*n, p, c)
        pixels = pixels + self.drop_path(self.mlp_in(self.norm_mlp_in(pixels)))
        B, N, _ = patches.shape
        n = pixels.shape[0] // B
        # (B*n, p, c) -> (B, n, p*c), pixel-major -> (B, n, D)
        fused = self.norm2_proj(self.proj(self.norm1_proj(pixels.reshape(B, n, -1))))
        patches = torch.cat([patches[:, : N - n], patches[:, N - n :] + fused], dim=1)  # prefix untouched
        patches = patches + self.drop_path(self.mixer(self.norm_out(patches)))
        return pixels, patches + self.drop_path(self.mlp(self.norm_mlp(patches)))


class TNT(nn.Module):
    def __init__(
        self,
        mixer: MixerFactory,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        inner_dim: int = 24,
        depth: int = 12,
        num_heads: int = 6,
        inner_heads: int = 4,
        pixel_stride: int = 4,
        mlp_ratio: float = 4.0,
        head: str = "cls",
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        lama_heads: int = 4,
        lama_context: str = "learned",
    ) -> None:
        """``num_heads`` and ``inner_heads``: the outer and inner attention heads (``num_heads`` is what mixer
        presets read, ``${backbone.num_heads}``); ``pixel_stride``: the stride of the per-patch conv, so a
        patch holds ceil(patch_size / pixel_stride)^2 pixels of ``inner_dim`` channels."""
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(
                f"data.img_size={img_size} is not divisible by backbone.patch_size={patch_size}: "
                "pick an image size that is a multiple of the patch size"
            )
        if head not in HEADS:
            raise ConfigError(f"backbone.head={head!r} must be one of {list(HEADS)}")
        if not isinstance(pixel_stride, int) or not 0 < pixel_stride <= patch_size:
            raise ConfigError(
                f"backbone.pixel_stride={pixel_stride!r} must be an integer in "
                f"[1, backbone.patch_size={patch_size}]"
            )
        check_heads(embed_dim, num_heads, "backbone.num_heads")
        check_heads(inner_dim, inner_heads, "backbone.inner_heads")
        self.num_classes, self.img_size, self.head_type = num_classes, img_size, head
        grid = img_size // patch_size
        self.layout = TokenLayout(grid=(grid, grid), num_prefix=1 if head == "cls" else 0)

        self.pixel_embed = PixelEmbed(img_size, patch_size, in_chans, inner_dim, stride=pixel_stride)
        pixel_grid = self.pixel_embed.new_patch_size
        num_pixel = pixel_grid[0] * pixel_grid[1]
        self.norm1_proj = nn.LayerNorm(num_pixel * inner_dim, eps=norm_eps)
        self.proj = nn.Linear(num_pixel * inner_dim, embed_dim)
        self.norm2_proj = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if head == "cls" else None
        self.patch_pos = nn.Parameter(torch.zeros(1, self.layout.num_tokens, embed_dim))
        self.pixel_pos = nn.Parameter(torch.zeros(1, inner_dim, *pixel_grid))
        self.pos_drop = nn.Dropout(drop_rate)

        drop_paths = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also on meta
        self.blocks = nn.ModuleList(
            TNTBlock(
                embed_dim, inner_dim, num_pixel,
                mixer(dim=embed_dim, layout=self.layout, layer_index=i, num_layers=depth),
                inner_heads=inner_heads, mlp_ratio=mlp_ratio, drop_path=drop_paths[i], proj_drop=drop_rate,
                norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = classifier_head(head, embed_dim, num_classes, lama_heads, lama_context)
        self._init_weights()
        for module in self.modules():  # a paper's own initialisation comes last, as in the ViT
            if module is not self and callable(getattr(module, "reset_mixer_parameters", None)):
                module.reset_mixer_parameters()

    def _init_weights(self) -> None:  # timm TNT: truncated normal 0.02 for tokens, positions and Linears
        for p in (self.cls_token, self.patch_pos, self.pixel_pos):
            if p is not None:
                trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Kept out of weight decay besides the 1-D parameters: tokens, positions, mixers' own names."""
        return mixers_no_weight_decay(self, {"cls_token", "patch_pos", "pixel_pos"})

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise LR decay: the embeddings, one group per block, the final
        norm with the last block; the head, matched by none, gets the top LR."""
        stem = r"^cls_token|^patch_pos|^pixel_pos|^pixel_embed|^norm1_proj|^proj|^norm2_proj"
        blocks = r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        return {"stem": stem, "blocks": blocks}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"the model was built for {self.img_size}x{self.img_size} images (data.img_size) "
                f"but got {tuple(images.shape[-2:])}"
            )
        B, n = images.shape[0], self.layout.num_patches
        pixels = self.pixel_embed(images, self.pixel_pos)  # (B*n, p, c)
        patches = self.norm2_proj(self.proj(self.norm1_proj(pixels.reshape(B, n, -1))))  # (B, n, D)
        if self.cls_token is not None:
            patches = torch.cat([self.cls_token.expand(B, -1, -1), patches], dim=1)  # (B, 1+n, D)
        patches = self.pos_drop(patches + self.patch_pos)
        for block in self.blocks:
            pixels, patches = block(pixels, patches)
        return self.norm(patches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return read_out(self.head_type, self.head, self.forward_features(images))
