"""A hierarchical MetaFormer backbone with a pluggable token mixer per stage.

    image (B, 3, H, W) -> stem conv (k 7, s 4) [+ norm] -> (B, h1*w1, C1)
      -> stage 1: blocks at (h1, w1, C1)
      -> stage i > 1: [norm] + conv (k 3, s 2): (h_{i-1}, w_{i-1}, C_{i-1}) -> (h_i, w_i, C_i), then blocks
      -> global average pool -> LayerNorm -> Linear or MLP head

Yu et al., "MetaFormer Is Actually What You Need for Vision" (CVPR 2022, PoolFormer; sail-sg/poolformer) and
"MetaFormer Baselines for Vision" (TPAMI 2024; sail-sg/metaformer), as timm ``models/metaformer.py`` builds
them: ``poolformer_s12``, ``poolformerv2_s12``, ``convformer_s18`` and ``caformer_s18`` have timm's parameter
names and counts here, so timm's state dicts load through ``init.checkpoint`` (mixerlab/pretrained.py).

The token mixer is one argument of a block, and a stage is a list of blocks with its own depth, width, mixer
and block options (``backbone.stages``). Every mixer is built through the mixer contract
(mixers/contract.py) with its stage's grid, ``TokenLayout(grid=(h_i, w_i), num_prefix=0)``, and mixes
(B, N, C) tokens: the backbone keeps tokens as (B, N, C) throughout and goes to (B, C, h, w) only for the
stem and the downsampling convolutions. A mixer that cannot run at a stage (a fixed token count, a window
that does not divide the grid) raises its ConfigError at build time, prefixed with the stage.

Block (timm ``MetaFormerBlock``; official ``MetaFormerBlock``), on tokens:

    x = r1 ⊙ x + l1 ⊙ DropPath(mixer(N1(x)))        r: ResScale, l: LayerScale (each per channel, optional)
    x = r2 ⊙ x + l2 ⊙ DropPath(MLP(N2(x)))          MLP: Linear C->4C, StarReLU or GELU, Linear 4C->C

Norms: ``layernorm`` over channels per token (timm's LayerNorm2d on NCHW is the same operation), with or
without bias; ``groupnorm`` = GroupNorm(1, C) over all tokens and channels of a sample (PoolFormer V1 with
bias, V2 without). Written here rather than taken from timm because timm's blocks run NCHW 1×1 convolutions
in conv stages, and the mixer contract is (B, N, C): the MLP is ``timm.layers.Mlp`` on tokens, the scales and
StarReLU are timm's ``Scale`` and ``StarReLU``, the MLP head timm's ``MlpHead``.

Departure from timm: a stage after the first always downsamples (timm skips the downsampling layer when two
consecutive stages have the same width, which no timm MetaFormer model has).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.metaformer import MlpHead, Scale, StarReLU
from torch import nn

from mixerlab.backbone import (
    MixerFactory,
    StagedBlocks,
    TokenGroupNorm,
    block_options,
    mixers_no_weight_decay,
)
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout

STAGE_KEYS = ("depth", "dim", "mixer", "mixer_options", "block")
CLASSIFIERS = ("linear", "mlp")
MLP_ACTS = {"starrelu": StarReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class StageBlock:
    """How one stage's blocks wire their mixer and MLP (``backbone.block``, ``backbone.stages[i].block``).

    norm:        ``layernorm`` over channels per token, or ``groupnorm`` = GroupNorm(1, C) over the sample
    norm_bias:   the norms' bias (PoolFormer V1: true; V2, ConvFormer, CAFormer: false)
    norm_eps:    the block norms' eps; null = ``backbone.norm_eps`` (PoolFormer V1's GroupNorm: 1e-5)
    mlp_act:     ``starrelu`` (s·ReLU(x)² + b, V2 and later) or ``gelu`` (V1)
    mlp_bias:    the MLP's biases (V1 only)
    mlp_ratio:   the MLP's hidden width over C
    layer_scale: LayerScale init on both branches (PoolFormer V1: 1e-5), or null
    res_scale:   ResScale init on both shortcuts (V2 and later: 1.0 in stages 3-4), or null
    """

    norm: str = "layernorm"
    norm_bias: bool = False
    norm_eps: float | None = None
    mlp_act: str = "starrelu"
    mlp_bias: bool = False
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    res_scale: float | None = None

    NORMS = ("layernorm", "groupnorm")

    @classmethod
    def from_config(cls, cfg: Mapping | None, key: str, base: StageBlock | None = None) -> StageBlock:
        spec = block_options(cls, cfg, key, base)
        if spec.norm not in cls.NORMS:
            raise ConfigError(f"{key}.norm={spec.norm!r} is not one of {list(cls.NORMS)}")
        if spec.mlp_act not in MLP_ACTS:
            raise ConfigError(f"{key}.mlp_act={spec.mlp_act!r} is not one of {list(MLP_ACTS)}")
        return spec


def token_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """A norm over (B, N, C) tokens: LayerNorm over C, or GroupNorm(1, C) over N and C."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    norm = TokenGroupNorm(dim, eps=eps)
    if not bias:
        norm.bias = None  # timm's GroupNorm1NoBias: weight only
    return norm


class MetaFormerBlock(nn.Module):
    def __init__(
        self, dim: int, mixer: nn.Module, spec: StageBlock, norm_eps: float, drop_path: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        eps = spec.norm_eps if spec.norm_eps is not None else norm_eps

        def scale(init: float | None) -> nn.Module:
            return Scale(dim, init, use_nchw=False) if init is not None else nn.Identity()

        self.norm1 = token_norm(spec.norm, dim, eps, spec.norm_bias)
        self.mixer = mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1, self.res_scale1 = scale(spec.layer_scale), scale(spec.res_scale)
        self.norm2 = token_norm(spec.norm, dim, eps, spec.norm_bias)
        self.mlp = Mlp(dim, int(dim * spec.mlp_ratio), act_layer=MLP_ACTS[spec.mlp_act], bias=spec.mlp_bias,
                       drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2, self.res_scale2 = scale(spec.layer_scale), scale(spec.res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.mixer(self.norm1(x))))
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))


class ConvTokens(nn.Module):
    """[norm on tokens] -> (B, C, h, w) -> strided conv -> (B, h'*w', C'): the stem and the downsampling
    layers (timm ``Stem`` and ``Downsampling``: the stem normalises after its conv, a downsampling before)."""

    def __init__(
        self, in_dim: int, out_dim: int, in_grid: tuple[int, int], kernel_size: int, stride: int,
        padding: int, norm: str, eps: float, image: bool = False,
    ) -> None:
        super().__init__()
        self.in_grid, self.image = in_grid, image
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=padding)
        width = out_dim if norm == "after" else in_dim
        self.norm = nn.LayerNorm(width, eps=eps, bias=False) if norm in ("before", "after") else nn.Identity()
        self.norm_first = norm == "before"
        self.out_grid = tuple((n + 2 * padding - kernel_size) // stride + 1 for n in in_grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = self.norm(x)
        if not self.image:  # (B, N, C) -> (B, C, h, w)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *self.in_grid)
        x = self.conv(x).flatten(2).transpose(1, 2)  # (B, h'*w', C')
        return x if self.norm_first else self.norm(x)


class MetaFormerStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module], layout: TokenLayout) -> None:
        super().__init__()
        self.layout = layout
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class GapHead(nn.Module):
    """timm's MetaFormer head: mean over tokens -> LayerNorm (with bias) -> dropout -> Linear or MlpHead."""

    def __init__(self, dim: int, num_classes: int, classifier: str, drop_rate: float, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(drop_rate)
        # MlpHead: Linear(C, 4C) -> SquaredReLU -> LayerNorm(4C, eps 1e-6 as timm; the official code's 1e-5)
        self.fc = MlpHead(dim, num_classes) if classifier == "mlp" else nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x.mean(dim=1))))


def stage_mixer_name(factory: MixerFactory) -> str:
    func = getattr(factory, "func", factory)
    return getattr(func, "__name__", type(func).__name__)


class MetaFormer(StagedBlocks, nn.Module):
    def __init__(
        self,
        mixer: MixerFactory,
        stages: Sequence[Mapping],
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        num_heads: int = 2,
        head: str = "gap",
        classifier: str = "linear",
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        stem: Mapping | None = None,
        downsample: Mapping | None = None,
        block: Mapping | None = None,
    ) -> None:
        """``stages``: one ``{depth, dim, mixer?, mixer_options?, block?}`` per stage, the first at the stem's
        grid. ``mixer`` (a factory; ``mixer: NAME`` is resolved by mixerlab/build.py) replaces the run's
        ``mixer=`` for that stage; ``block`` overrides ``backbone.block`` there. ``num_heads`` is only what
        the mixer presets read (``${backbone.num_heads}``). ``stem`` and ``downsample``: ``{kernel_size,
        stride, padding, norm}`` of the strided convolutions (norm: true = LayerNorm, no bias, as timm)."""
        super().__init__()
        if head != "gap":
            raise ConfigError(f"backbone.head={head!r}: the MetaFormer backbone reads out by global average "
                              "pooling (gap); it has no CLS token")
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"backbone.classifier={classifier!r} must be one of {list(CLASSIFIERS)}")
        if not stages:
            raise ConfigError("backbone.stages is empty: give at least one {depth, dim} stage")
        self.num_classes, self.img_size = num_classes, img_size
        stem_opts = {"kernel_size": 7, "stride": 4, "padding": 2, "norm": True, **dict(stem or {})}
        down_opts = {"kernel_size": 3, "stride": 2, "padding": 1, "norm": True, **dict(downsample or {})}
        for key, opts in (("backbone.stem", stem_opts), ("backbone.downsample", down_opts)):
            unknown = set(opts) - {"kernel_size", "stride", "padding", "norm"}
            if unknown:
                raise ConfigError(f"{key} has unknown keys {sorted(unknown)}; it takes kernel_size, stride, "
                                  "padding, norm")
        base = StageBlock.from_config(block, "backbone.block")
        plans = [self._stage_plan(i, stage, mixer, base) for i, stage in enumerate(stages)]
        depth = sum(p[0] for p in plans)
        drop_paths = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also meta

        self.stem = ConvTokens(
            in_chans, plans[0][1], (img_size, img_size), stem_opts["kernel_size"], stem_opts["stride"],
            stem_opts["padding"], "after" if stem_opts["norm"] else "none", norm_eps, image=True,
        )
        grid, prev_dim, index, built = self.stem.out_grid, plans[0][1], 0, []
        for i, (n, dim, factory, spec) in enumerate(plans):
            key = f"backbone.stages[{i}]"
            if i == 0:
                down: nn.Module = nn.Identity()
            else:
                down = ConvTokens(
                    prev_dim, dim, grid, down_opts["kernel_size"], down_opts["stride"], down_opts["padding"],
                    "before" if down_opts["norm"] else "none", norm_eps,
                )
                grid = down.out_grid
            if min(grid) < 1:
                raise ConfigError(f"{key}: data.img_size={img_size} leaves no tokens at this stage (grid "
                                  f"{grid[0]}x{grid[1]}): use larger images or fewer stages")
            layout = TokenLayout(grid=grid, num_prefix=0)
            blocks = []
            for _ in range(n):
                try:
                    mixer_module = factory(dim=dim, layout=layout, layer_index=index, num_layers=depth)
                except ConfigError as error:
                    raise ConfigError(
                        f"{key} ({stage_mixer_name(factory)} at a {grid[0]}x{grid[1]} grid, width {dim}) "
                        f"cannot hold this mixer: {error}"
                    ) from None
                blocks.append(MetaFormerBlock(dim, mixer_module, spec, norm_eps, drop_paths[index],
                                              proj_drop_rate))
                index += 1
            built.append(MetaFormerStage(down, blocks, layout))
            prev_dim = dim
        self.stages = nn.ModuleList(built)
        self.layout = self.stages[0].layout  # the largest token grid (model_info's "tokens")
        self.head = GapHead(prev_dim, num_classes, classifier, drop_rate, eps=1e-6)
        self.apply(self._init_weights)
        for module in self.modules():  # a paper's own initialisation comes last, as in the ViT
            if module is not self and callable(getattr(module, "reset_mixer_parameters", None)):
                module.reset_mixer_parameters()

    @staticmethod
    def _stage_plan(
        i: int, stage: Mapping, mixer: MixerFactory, base: StageBlock
    ) -> tuple[int, int, MixerFactory, StageBlock]:
        key = f"backbone.stages[{i}]"
        stage = dict(stage)
        unknown = set(stage) - set(STAGE_KEYS)
        if unknown:
            raise ConfigError(
                f"{key} has unknown keys {sorted(unknown)}; a stage takes {', '.join(STAGE_KEYS)}"
            )
        n, dim = stage.get("depth"), stage.get("dim")
        for name, value in (("depth", n), ("dim", dim)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}.{name}={value!r} must be a positive integer")
        if stage.get("mixer_options") and not stage.get("mixer"):
            raise ConfigError(f"{key}.mixer_options needs {key}.mixer (a conf/mixer name)")
        spec = StageBlock.from_config(stage.get("block"), f"{key}.block", base=base)
        return n, dim, stage.get("mixer") or mixer, spec

    @staticmethod
    def _init_weights(m: nn.Module) -> None:  # timm MetaFormer._init_weights
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Mixers' own names kept out of weight decay (every 1-D parameter already is: norms, scales)."""
        return mixers_no_weight_decay(self, set())

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise LR decay, as timm's hierarchical models (ConvNeXt) define
        them: the stem, then each stage (coarse) or each downsampling layer and block; the head last."""
        if coarse:
            return {"stem": r"^stem", "blocks": r"^stages\.(\d+)"}
        return {"stem": r"^stem",
                "blocks": [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]}

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"the model was built for {self.img_size}x{self.img_size} images (data.img_size) "
                f"but got {tuple(images.shape[-2:])}"
            )
        x = self.stem(images)  # (B, h1*w1, C1)
        for stage in self.stages:
            x = stage(x)  # (B, h_i*w_i, C_i)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))
