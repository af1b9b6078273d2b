"""An isotropic ViT/DeiT backbone with a pluggable token mixer per layer.

    image (B, 3, H, W) -> conv patch embedding -> (B, h*w, D) [+ CLS] + position embedding
      -> L blocks, each mixing tokens with its mixer and features with an MLP
      -> LayerNorm -> CLS token or global average pool -> Linear(D, classes)
                   or LAMA pooling (B, m, D), flattened -> Linear(m*D, classes)   (``head=lama``)

The default block is DeiT's pre-norm block. Papers that depart from it (GFNet's single residual, FNet's
post-norm, the feed-forward-only model's MLP-first order, PoolFormer's GroupNorm and LayerScale, the
Activator's gated feature stage with one shared LayerNorm) are expressed through :class:`BlockSpec`
options in config, so no code here knows which mixer it holds.

XCiT-style backbones (XCiT, ToST) are options too, built from timm's XCiT pieces: ``patch_embed=conv``
(a stack of stride-2 3x3 conv + BatchNorm + GELU, ``timm.models.xcit.ConvPatchEmbed``), ``pos_embed=fourier``
(sinusoidal features of the patch coordinates through a 1x1 conv, added to the patch tokens only,
``PositionalEncodingFourier``), ``class_attention_layers=k`` (CaiT: the CLS token joins only for k final
class-attention blocks, ``ClassAttentionBlock`` with LayerScale ``block.layer_scale`` or 1 and the XCiT
token norm; the mixer blocks then see patch tokens alone) and ``drop_path_schedule=constant``.

ConViT's departures are backbone options: ``cls_from_layer`` (the CLS token joins before layer k; earlier
mixers get a layout without prefix), ``pos_embed=learned_patches`` and ``norm_eps``. A mixer with its paper's
own initialisation defines ``reset_mixer_parameters()``, called after the generic init below.

Every norm uses ``norm_eps``: 1e-6 in the ImageNet backbones (``conf/backbone/vit_{tiny,small,base}``), as in
timm's ViT/DeiT and the GFNet, SpectFormer, feed-forward-only and Fibottention code
(``partial(nn.LayerNorm, eps=1e-6)``), so timm's weights give identical logits here; torch's default 1e-5
in the digits backbone, whose measured results (RESULTS.md) were run with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial

import torch
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, trunc_normal_
from timm.models.xcit import ClassAttentionBlock, ConvPatchEmbed, PositionalEncodingFourier
from torch import nn

from mixerlab.errors import ConfigError
from mixerlab.lama import LamaHead
from mixers.contract import TokenLayout, check_heads

MixerFactory = Callable[..., nn.Module]



def block_options(spec_class: type, cfg: Mapping | None, key: str, base=None):
    """A block-options dataclass from ``cfg`` on top of ``base`` (or the class defaults): an unknown option
    is a ConfigError naming ``key`` and the valid ones. Shared by every backbone's block spec."""
    values = dict(vars(base)) if base is not None else {}
    known = {f.name for f in fields(spec_class)}
    for name, value in dict(cfg or {}).items():
        if name not in known:
            raise ConfigError(f"{key}.{name} is not a block option; valid options: {sorted(known)}")
        values[name] = value
    return spec_class(**values)


def mixers_no_weight_decay(model: nn.Module, names: set[str]) -> set[str]:
    """``names`` plus every submodule's own ``no_weight_decay()`` names, prefixed with its path: what a
    backbone's ``no_weight_decay`` returns (timm's optimizer reads it)."""
    names = set(names)
    for module_name, module in model.named_modules():
        extra = getattr(module, "no_weight_decay", None)
        if module is not model and callable(extra):
            names |= {f"{module_name}.{n}" for n in extra()}
    return names

class StagedBlocks:
    """Per-block views of a hierarchical backbone whose ``stages`` each hold ``blocks`` and a ``layout``
    (the MetaFormer, SG-Former): what per-block tools read (pretrained loading, the ERF, checkpoints'
    mixer families), in one place for every staged layout."""

    stages: nn.ModuleList

    @property
    def blocks(self) -> list[nn.Module]:
        """Every block, stage by stage (per-block tools read it: the mixer families a checkpoint records)."""
        return [block for stage in self.stages for block in stage.blocks]

    def block_prefixes(self) -> list[str]:
        """The state-dict prefix of each block in :attr:`blocks` order (mixerlab/pretrained.py)."""
        return [f"stages.{i}.blocks.{j}" for i, stage in enumerate(self.stages)
                for j in range(len(stage.blocks))]

    def block_layouts(self) -> list[TokenLayout]:
        """Each block's token layout in :attr:`blocks` order (its stage's grid; the ERF's centre token)."""
        return [stage.layout for stage in self.stages for _ in stage.blocks]


@dataclass(frozen=True)
class BlockSpec:
    """How one block wires its mixer and its feature MLP.

    style: ``prenorm``         x + DropPath(mixer(N1(x))); x + DropPath(MLP(N2(x)))        (DeiT)
           ``single_residual`` x + DropPath(MLP(N2(mixer(N1(x)))))                          (GFNet, AFNO)
           ``postnorm``        N1(x + mixer(x)); N2(x + MLP(x))                             (FNet)
    order: ``mixer_first`` or ``mlp_first`` (the feed-forward-only model runs the feature MLP first).
    norm:  ``layernorm`` over channels, or ``groupnorm`` = GroupNorm(1, C) over tokens and channels.
    layer_scale: LayerScale init on each residual branch (PoolFormer 1e-5), or None.
    mlp:   False drops the feature MLP (the attention-only ablation).
    mixer_norm: False feeds the mixer the raw residual stream, for mixers that normalise their own input
           along another axis (the feed-forward-only model's token MLP has a LayerNorm over tokens).
    mixer: False drops the token-mixer sub-block (no ``x + mixer(N1(x))``; the mixer must have no
           parameters): the Activator control with ``mixer=identity`` has no token-mixing sub-block at all.
    mlp_type: ``mlp`` (timm Mlp) or ``activator``: the feature stage is x + gate(N(x)), then
           x + MLP(N(x)) (Abdullah & Aydin 2024, ``Abdullah-88/Activator`` activator.py), see ActivatorGate.
    shared_norm: one norm module for every sub-block of the block (activator.py's ``self.norm`` normalises
           the input of both its sub-blocks), instead of one module each.
    """

    style: str = "prenorm"
    order: str = "mixer_first"
    norm: str = "layernorm"
    layer_scale: float | None = None
    mlp: bool = True
    mixer_norm: bool = True
    mixer: bool = True
    mlp_type: str = "mlp"
    shared_norm: bool = False

    STYLES = ("prenorm", "single_residual", "postnorm")
    MLP_TYPES = ("mlp", "activator")
    ORDERS = ("mixer_first", "mlp_first")
    NORMS = ("layernorm", "groupnorm")

    @classmethod
    def from_config(cls, cfg: Mapping | None, key: str, base: BlockSpec | None = None) -> BlockSpec:
        spec = block_options(cls, cfg, key, base)
        for name, allowed in zip(("style", "order", "norm", "mlp_type"),
                                 (cls.STYLES, cls.ORDERS, cls.NORMS, cls.MLP_TYPES), strict=True):
            if getattr(spec, name) not in allowed:
                raise ConfigError(f"{key}.{name}={getattr(spec, name)!r} is not one of {list(allowed)}")
        if spec.style == "single_residual" and not spec.mlp:
            raise ConfigError(f"{key}: style=single_residual needs mlp=true (the MLP closes the residual)")
        departures = [f"{n}={getattr(spec, n)}" for n in ("mixer", "mlp_type")
                      if getattr(spec, n) != DEFAULTS[n]]
        if departures and spec.style != "prenorm":
            raise ConfigError(f"{key}: {', '.join(departures)} is defined for style=prenorm only")
        if spec.mlp_type != "mlp" and not spec.mlp:
            raise ConfigError(f"{key}: mlp_type={spec.mlp_type} needs mlp=true")
        return spec


DEFAULTS = {f.name: f.default for f in fields(BlockSpec)}


class ActivatorGate(nn.Module):
    """The Activator's gating unit (Abdullah & Aydin, arXiv 2405.15953; Abdullah-88/Activator activator.py).

        gate(x) = W3( LN(GELU(W1 x)) * LN(W2 x) )      (B, N, C) -> (B, N, d_ffn) -> (B, N, C), per token

    with the *same* LayerNorm(d_ffn) module on both branches; 3C d_ffn + 4 d_ffn + C parameters. Written by
    hand: timm's GluMlp(norm_layer=...) normalises after the product, not each branch.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj_u = nn.Linear(dim, hidden)
        self.proj_v = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)  # one module, both branches
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(nn.functional.gelu(self.proj_u(x)))  # (B, N, d_ffn)
        v = self.norm(self.proj_v(x))  # (B, N, d_ffn)
        return self.proj_out(u * v)


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm(1, C) on (B, N, C) tokens: normalise over all tokens and channels of a sample."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__(1, dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


NORM_LAYERS = {"layernorm": nn.LayerNorm, "groupnorm": TokenGroupNorm}


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        spec: BlockSpec,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.spec = spec
        shared = NORM_LAYERS[spec.norm](dim, eps=norm_eps) if spec.shared_norm else None

        def norm(width: int) -> nn.Module:
            return shared if shared is not None else NORM_LAYERS[spec.norm](width, eps=norm_eps)

        if not spec.mixer and any(p.requires_grad for p in mixer.parameters()):
            raise ConfigError(
                f"backbone.block.mixer=false drops the token-mixer sub-block, but {type(mixer).__name__} has "
                "parameters that would never train: use mixer=identity, or block.mixer=true"
            )
        self.norm1 = norm(dim) if spec.mixer_norm and spec.mixer else nn.Identity()
        self.mixer = mixer
        self.ls1 = LayerScale(dim, spec.layer_scale) if spec.layer_scale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if spec.mlp_type == "activator":
            self.norm_gate = norm(dim)
            self.gate = ActivatorGate(dim, int(dim * mlp_ratio))
            self.ls_gate = LayerScale(dim, spec.layer_scale) if spec.layer_scale else nn.Identity()
        if spec.mlp:
            self.norm2 = norm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
            self.ls2 = LayerScale(dim, spec.layer_scale) if spec.layer_scale else nn.Identity()

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.mixer:
            return x
        if self.spec.style == "postnorm":
            return self.norm1(x + self.drop_path(self.ls1(self.mixer(x))))
        return x + self.drop_path(self.ls1(self.mixer(self.norm1(x))))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spec.mlp:
            return x
        if self.spec.mlp_type == "activator":  # gated sub-block first, then the MLP (prenorm only)
            x = x + self.drop_path(self.ls_gate(self.gate(self.norm_gate(x))))
        if self.spec.style == "postnorm":
            return self.norm2(x + self.drop_path(self.ls2(self.mlp(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.style == "single_residual":
            return x + self.drop_path(self.ls2(self.mlp(self.norm2(self.mixer(self.norm1(x))))))
        if self.spec.order == "mlp_first":
            return self._mix(self._mlp(x))
        return self._mlp(self._mix(x))


class ConvStem(ConvPatchEmbed):
    """XCiT's convolutional patch embedding, returning the (B, h*w, D) tokens alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


def layer_plan(
    depth: int,
    mixer: MixerFactory,
    block: Mapping | None,
    schedule: Sequence[Mapping] | None,
) -> list[tuple[MixerFactory, BlockSpec]]:
    """Expand the per-layer mixer schedule into one (mixer factory, block spec) per layer.

    ``schedule`` lists segments from the first layer on, each ``{layers: n, mixer: factory?,
    block: {...}?}``; layers after the last segment use ``mixer`` and ``block``. Example (SpectFormer):
    ``[{layers: 4, mixer: <spectral>, block: {style: single_residual}}]`` then attention.
    """
    default_spec = BlockSpec.from_config(block, "backbone.block")
    plan: list[tuple[MixerFactory, BlockSpec]] = []
    for i, segment in enumerate(schedule or []):
        key = f"backbone.schedule[{i}]"
        segment = dict(segment)
        unknown = set(segment) - {"layers", "mixer", "block"}
        if unknown:
            raise ConfigError(
                f"{key} has unknown keys {sorted(unknown)}; a segment takes layers, mixer, block"
            )
        n = segment.get("layers")
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"{key}.layers={n!r} must be a positive integer")
        spec = BlockSpec.from_config(segment.get("block"), f"{key}.block", base=default_spec)
        plan += [(segment.get("mixer") or mixer, spec)] * n
    if len(plan) > depth:
        raise ConfigError(f"backbone.schedule covers {len(plan)} layers but backbone.depth={depth}")
    plan += [(mixer, default_spec)] * (depth - len(plan))
    return plan


# cls: the CLS token; gap: the mean of the tokens; lama: LAMA's attentive pooling (mixerlab/lama.py)
HEADS = ("cls", "gap", "lama")
# learned: one per token, CLS included (DeiT); learned_patches: patches only (ConViT); fourier: XCiT's
# sinusoidal features of the patch coordinates (patches only); none
POS_EMBEDS = ("learned", "learned_patches", "fourier", "none")


def check_cls_from_layer(
    cls_from_layer: int, depth: int, head: str, pos_embed: str, class_attention_layers: int = 0
) -> None:
    """``backbone.cls_from_layer=k``: the CLS token joins before layer k (ConViT's local_up_to_layer)."""
    if cls_from_layer == 0:
        return
    key = f"backbone.cls_from_layer={cls_from_layer}"
    if not isinstance(cls_from_layer, int) or not 0 < cls_from_layer < depth:
        raise ConfigError(
            f"{key} must be an integer in [0, backbone.depth={depth}): a later CLS token is never mixed"
        )
    if head != "cls":
        raise ConfigError(f"{key} needs backbone.head=cls (backbone.head={head!r} has no CLS token)")
    if pos_embed == "learned":
        raise ConfigError(
            f"{key} with backbone.pos_embed=learned: the position embedding would cover a CLS token that "
            "joins later; use backbone.pos_embed=learned_patches"
        )
    if class_attention_layers:
        raise ConfigError(
            f"{key} with backbone.class_attention_layers={class_attention_layers}: the CLS token joins "
            "either before a mixer layer or for the final class-attention blocks; set one of them to 0"
        )


class VisionTransformer(nn.Module):
    def __init__(
        self,
        mixer: MixerFactory,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        head: str = "cls",
        pos_embed: str = "learned",
        cls_from_layer: int = 0,
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        block: Mapping | None = None,
        schedule: Sequence[Mapping] | None = None,
        patch_embed: str = "linear",
        class_attention_layers: int = 0,
        drop_path_schedule: str = "linear",
        lama_heads: int = 4,
        lama_context: str = "learned",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(
                f"data.img_size={img_size} is not divisible by backbone.patch_size={patch_size}: "
                "pick an image size that is a multiple of the patch size"
            )
        check_heads(embed_dim, num_heads, "backbone.num_heads")
        check_token_options(
            head, pos_embed, patch_embed, patch_size, class_attention_layers, drop_path_schedule
        )
        check_cls_from_layer(cls_from_layer, depth, head, pos_embed, class_attention_layers)
        self.num_classes = num_classes
        self.img_size = img_size
        self.head_type = head
        self.cls_from_layer = cls_from_layer
        grid = img_size // patch_size
        # with class-attention layers the CLS token joins after the mixer blocks, which see patches alone
        cls_in_blocks = head == "cls" and not class_attention_layers
        self.layout = TokenLayout(grid=(grid, grid), num_prefix=1 if cls_in_blocks else 0)
        patches_only = TokenLayout(grid=(grid, grid), num_prefix=0)  # layers before the CLS token joins

        if patch_embed == "conv":
            self.patch_embed = ConvStem(img_size, patch_size, in_chans, embed_dim)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if head == "cls" else None
        pos_tokens = self.layout.num_tokens if pos_embed == "learned" else self.layout.num_patches
        learned = pos_embed in ("learned", "learned_patches")
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_tokens, embed_dim)) if learned else None
        self.pos_embed_prefix = pos_embed == "learned"
        self.pos_fourier = PositionalEncodingFourier(dim=embed_dim) if pos_embed == "fourier" else None
        self.pos_drop = nn.Dropout(drop_rate)

        plan = layer_plan(depth, mixer, block, schedule)
        if drop_path_schedule == "constant":  # XCiT / ToST: every block drops with the same rate
            drop_paths = [drop_path_rate] * depth
        else:
            drop_paths = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also meta
        self.blocks = nn.Sequential(
            *(
                Block(
                    embed_dim,
                    factory(
                        dim=embed_dim,
                        layout=self.layout if i >= cls_from_layer else patches_only,
                        layer_index=i,
                        num_layers=depth,
                    ),
                    spec,
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_paths[i],
                    proj_drop=drop_rate,
                    norm_eps=norm_eps,
                )
                for i, (factory, spec) in enumerate(plan)
            )
        )
        eta = plan[-1][1].layer_scale or 1.0
        self.class_blocks = nn.Sequential(
            *(
                ClassAttentionBlock(
                    embed_dim, num_heads, mlp_ratio, qkv_bias=True, proj_drop=drop_rate, eta=eta,
                    tokens_norm=True, norm_layer=partial(nn.LayerNorm, eps=norm_eps),
                )
                for _ in range(class_attention_layers)
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = classifier_head(head, embed_dim, num_classes, lama_heads, lama_context)
        self._init_weights()
        for module in self.modules():  # a paper's own initialisation (ConViT's local init) comes last
            if module is not self and callable(getattr(module, "reset_mixer_parameters", None)):
                module.reset_mixer_parameters()

    def _init_weights(self) -> None:
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay besides the 1-D ones (timm's optimizer reads this)."""
        return mixers_no_weight_decay(self, {"pos_embed", "cls_token"})

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth, as timm's ViT defines them (timm's layer-wise LR decay reads this):
        the embeddings first, one group per block, the final norm with the last block (with class-attention
        blocks, as timm's XCiT: one group each after the blocks, the norm with the last); the head, matched
        by none, gets the top LR."""
        stem = r"^cls_token|^pos_embed|^pos_fourier|^patch_embed"
        if len(self.class_blocks):  # timm's XCiT: the class-attention blocks follow the blocks
            return {"stem": stem, "blocks": r"^blocks\.(\d+)",
                    "class_blocks": [(r"^class_blocks\.(\d+)", None), (r"^norm", (99999,))]}
        blocks = r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        return {"stem": stem, "blocks": blocks}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"the model was built for {self.img_size}x{self.img_size} images (data.img_size) "
                f"but got {tuple(images.shape[-2:])}"
            )
        x = self.patch_embed(images)  # (B, h*w, D)
        B, h, w = x.shape[0], *self.layout.grid
        if self.pos_fourier is not None:  # (B, D, h, w) -> (B, h*w, D), patch tokens only
            x = x + self.pos_fourier(B, h, w).flatten(2).transpose(1, 2).to(x.dtype)
        if self.pos_embed is not None and not self.pos_embed_prefix:
            x = x + self.pos_embed  # patches only: the CLS token carries no position
        cls = self.cls_token.expand(B, -1, -1) if self.cls_token is not None else None
        if cls is not None and self.layout.num_prefix and self.cls_from_layer == 0:
            x = torch.cat([cls, x], dim=1)  # (B, 1+h*w, D)
        if self.pos_embed is not None and self.pos_embed_prefix:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        for i, block in enumerate(self.blocks):
            if cls is not None and i == self.cls_from_layer > 0:
                x = torch.cat([cls, x], dim=1)  # CLS joins late (ConViT)
            x = block(x)
        if len(self.class_blocks):
            x = self.class_blocks(torch.cat([cls, x], dim=1))  # CaiT: CLS attends to the final patches
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return read_out(self.head_type, self.head, self.forward_features(images))


def classifier_head(head: str, dim: int, num_classes: int, lama_heads: int, lama_context: str) -> nn.Module:
    """The classifier of an isotropic backbone (ViT, TNT): a Linear on the pooled token for ``cls`` and
    ``gap``; for ``lama``, m attention-pooled vectors flattened into a Linear (mixerlab/lama.py)."""
    if head == "lama":
        return LamaHead(dim, num_classes, lama_heads, lama_context)
    return nn.Linear(dim, num_classes)


def read_out(head_type: str, head: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits from the final tokens (B, N, D): the CLS token, their mean (GAP) or LAMA's pooling of them."""
    if head_type == "lama":
        return head(tokens)  # (B, N, D) -> (B, m, D) -> logits
    return head(tokens[:, 0] if head_type == "cls" else tokens.mean(dim=1))  # (B, D) -> logits


def check_token_options(
    head: str, pos_embed: str, patch_embed: str, patch_size: int, class_layers: int, drop_path_schedule: str
) -> None:
    if head not in HEADS:
        raise ConfigError(f"backbone.head={head!r} must be one of {list(HEADS)}")
    if pos_embed not in POS_EMBEDS:
        raise ConfigError(f"backbone.pos_embed={pos_embed!r} must be one of {list(POS_EMBEDS)}")
    if patch_embed not in ("linear", "conv"):
        raise ConfigError(f"backbone.patch_embed={patch_embed!r} must be 'linear' or 'conv'")
    if patch_embed == "conv" and patch_size not in (8, 16):
        raise ConfigError(
            f"backbone.patch_embed=conv (XCiT's stride-2 conv stem) supports backbone.patch_size 8 or 16, "
            f"not {patch_size}: use backbone.patch_embed=linear"
        )
    if not isinstance(class_layers, int) or class_layers < 0:
        raise ConfigError(f"backbone.class_attention_layers={class_layers!r} must be an integer >= 0")
    if class_layers and head != "cls":
        raise ConfigError(
            f"backbone.class_attention_layers={class_layers} needs backbone.head=cls "
            "(the class-attention blocks read out a CLS token)"
        )
    if drop_path_schedule not in ("linear", "constant"):
        raise ConfigError(
            f"backbone.drop_path_schedule={drop_path_schedule!r} must be 'linear' or 'constant'"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
