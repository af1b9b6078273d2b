"""Pretrained weights into any backbone preset: the one converter for timm/DeiT ViT files, timm MetaFormer
files (poolformer, poolformerv2, convformer, caformer) and mixerlab runs.

    file    .pth/.pt/.bin/.ckpt: torch.load(weights_only=True); .safetensors: safetensors.torch.load_file
      -> unwrap   {"model": sd} / {"state_dict": sd} (DeiT, timm), a Lightning checkpoint ("backbone." keys),
                  EMA weights with init.ema=true ({"model_ema"}, {"state_dict_ema"}, "ema.module." keys)
      -> source   the first entry of SOURCES whose signature key the state dict holds; its renames map the
                  keys to ours (timm's blocks.i.attn.* -> blocks.i.mixer.*; a MetaFormer's
                  stages.s.blocks.j.token_mixer.* -> .mixer.*, its 1x1-conv weights flattened to Linear's)
      -> match    key by key against the model's state dict:
                    same name and shape                       loaded
                    pos_embed on another grid                 resampled: bicubic over the patch grid, the
                                                              prefix tokens (CLS, DeiT's distillation) kept
                                                              apart; the model's CLS keeps the CLS position
                    head.* for another number of classes      ignored: the model keeps its new classifier
                    block i's mixer, another mixer family     ignored: that mixer stays as initialised, the
                                                              block's norms and MLP load (mixer surgery)
                    anything else of another shape            ConfigError naming the key
                    only in the checkpoint                    ignored, with the reason
                    only in the model                         initialised (kept as built)
      -> InitReport  printed, and recorded in summary.json under "init"

Mixer families: a mixer class's ``pretrained_family`` attribute (mixers/contract.py); a mixer without one
is its own family. A source says which family each of its blocks' mixers is: every timm ViT block holds
attention; a mixerlab checkpoint records its blocks' families (``mixer_families``, written by the recipe).

Sources: ``mixerlab`` (our checkpoints), ``timm_tnt`` (timm's TNT, ``tnt_*``: its outer ``attn_out`` is
the block's mixer, ``qk`` and ``v`` fused into ``qkv``), ``timm_convit`` (timm's ConViT, ``convit_*``: GPSA
blocks hold ``gating_param``, the later blocks ConViT's MHSA; the position embedding covers the patches
only), ``sgformer`` (the official SG-Former's files, renamed into mixerlab/sgformer.py's names) and
``timm_vit`` (timm's VisionTransformer, ``vit_*``/``deit_*``, and DeiT's files). Adding a source
architecture is one :class:`Source` in ``SOURCES``, listed before any source whose signature its files also
match (ConViT's MHSA blocks carry ``attn.qkv.weight``, timm_vit's signature, so ConViT comes first). A test
builds the timm model with random init, saves its state dict and asserts identical logits in the preset.

A file the converter cannot map ends in a ConfigError naming the file, the key and both shapes (or, for an
unknown architecture, a few of its keys with their shapes): a checkpoint is never half-loaded with a raw
``load_state_dict`` traceback.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from mixerlab.errors import ConfigError, DamagedFileError
from mixerlab.storage import load_torch_file

StateDict = dict[str, torch.Tensor]
# a block's state-dict prefix: blocks.i (the ViT) or stages.s.blocks.j (the MetaFormer)
BLOCK_KEY = re.compile(r"^((?:stages\.\d+\.)?blocks\.\d+)\.")
MIXER_KEY = re.compile(r"^((?:stages\.\d+\.)?blocks\.\d+)\.mixer\.")


def mixer_family(mixer: nn.Module) -> str:
    """The family a mixer's weights belong to: its ``pretrained_family``, else its class path."""
    return getattr(mixer, "pretrained_family", None) or f"{type(mixer).__module__}.{type(mixer).__qualname__}"


def mixer_families(backbone: nn.Module) -> list[str]:
    """One family per block, in order (stored in mixerlab checkpoints for later surgery)."""
    return [mixer_family(block.mixer) for block in getattr(backbone, "blocks", [])]


def block_prefixes(backbone: nn.Module) -> list[str]:
    """Each block's state-dict prefix in ``backbone.blocks`` order: the backbone's ``block_prefixes()`` (the
    MetaFormer's ``stages.s.blocks.j``), else the ViT's ``blocks.i``."""
    own = getattr(backbone, "block_prefixes", None)
    return own() if callable(own) else [f"blocks.{i}" for i in range(len(getattr(backbone, "blocks", [])))]


@dataclass(frozen=True)
class Source:
    """One checkpoint architecture the converter reads.

    signature:    a regex only this source's state dict keys match (checked before renaming)
    renames:      (regex, replacement) pairs applied to every key, in order, giving our names
    ignored:      (regex on our names, why) for keys with no counterpart in a mixerlab backbone
    mixer_family: (renamed state dict, checkpoint metadata, block index, block prefix) -> the family of
                  that block's mixer in the checkpoint, or None when unknown (then names and shapes decide)
    pos_prefix:   the prefix-token parameters whose positions lead pos_embed when present, in order
    accepts:      a further test of the (unrenamed) state dict, where key names alone do not tell sources
                  apart (timm's MetaFormer and ours share them; timm's conv stages hold 4-D 1x1 weights)
    squeeze_1x1:  a (out, in, 1, 1) convolution weight loads into a Linear's (out, in) weight
    rewrite:      a last pass over the renamed state dict, for tensors that are not one-to-one (timm TNT's
                  separate ``qk`` and ``v`` attention weights become one ``qkv``)
    """

    name: str
    signature: str
    renames: tuple[tuple[str, str], ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    mixer_family: Callable[[Mapping, Mapping, int, str], str | None] = lambda state, meta, i, prefix: None
    pos_prefix: tuple[str, ...] = ("cls_token",)
    accepts: Callable[[Mapping], bool] = lambda state: True
    squeeze_1x1: bool = False
    rewrite: Callable[[StateDict], StateDict] = lambda state: state


def _recorded_family(state: Mapping, meta: Mapping, i: int, prefix: str) -> str | None:
    families = meta.get("mixer_families") or []
    return _current_family(families[i]) if i < len(families) else None


def _current_family(recorded: str) -> str:
    """A family recorded as a class path (the class had no ``pretrained_family`` when the checkpoint was
    written) is that class's family today, so declaring one later keeps older checkpoints loading."""
    module, _, name = recorded.rpartition(".")
    if not module.startswith("mixers."):  # a file's strings import only our mixers
        return recorded
    try:
        import importlib

        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return recorded
    return getattr(cls, "pretrained_family", None) or recorded


SOURCES: tuple[Source, ...] = (
    Source(
        name="mixerlab",
        signature=r"^(?:stages\.\d+\.)?blocks\.\d+\.mixer\.",
        mixer_family=_recorded_family,
        accepts=lambda state: not _conv_mlp(state),
    ),
    Source(
        name="timm_convit",  # timm ConVit (convit_tiny/small/base); our GPSA and ConViTMHSA reuse its names
        signature=r"^blocks\.\d+\.attn\.gating_param$",
        renames=((r"^blocks\.(\d+)\.attn\.", r"blocks.\1.mixer."),),
        mixer_family=lambda state, meta, i, prefix: (
            "gpsa" if f"{prefix}.mixer.gating_param" in state
            else "attention" if f"{prefix}.mixer.qkv.weight" in state else None
        ),
        pos_prefix=(),  # ConViT adds the CLS token after its position embedding
    ),
    Source(
        name="timm_vit",  # timm VisionTransformer (vit_*, deit_*), DeiT's own files, DeiT distilled
        signature=r"^blocks\.\d+\.attn\.qkv\.weight$",
        renames=((r"^blocks\.(\d+)\.attn\.", r"blocks.\1.mixer."),),
        ignored=(
            (r"^dist_token$", "DeiT's distillation token: the model has no distillation head"),
            (r"^head_dist\.", "DeiT's distillation head: the model has no distillation token"),
            (r"^fc_norm\.", "timm's norm after pooling: the model normalises before pooling (norm.*)"),
        ),
        mixer_family=lambda state, meta, i, prefix: (
            "attention" if f"{prefix}.mixer.qkv.weight" in state else None
        ),
        pos_prefix=("cls_token", "dist_token"),
    ),
    Source(
        name="timm_tnt",  # timm TNT (tnt_s_patch16_224, tnt_b_patch16_224): mixerlab/tnt.py keeps its names
        signature=r"^blocks\.\d+\.attn_out\.qk\.weight$",
        renames=((r"^blocks\.(\d+)\.attn_out\.", r"blocks.\1.mixer."),),
        mixer_family=lambda state, meta, i, prefix: (
            "attention" if f"{prefix}.mixer.qkv.weight" in state else None
        ),
        pos_prefix=(),  # its position embedding is patch_pos, loaded as is
        rewrite=lambda state: _fused_qkv(state, r"^blocks\.\d+\.mixer\."),
    ),
    Source(
        name="sgformer",  # the official SG-Former (OliverRensu/SG-Former sgformer_*; mixerlab/sgformer.py)
        signature=r"^block\d+\.\d+\.attn\.lepe_linear\.weight$",
        renames=(
            *((rf"^block{s + 1}\.", f"stages.{s}.blocks.") for s in range(4)),  # its four stages, 1-based
            *((rf"^patch_embed{s + 1}\.", f"stages.{s}.downsample.") for s in range(1, 4)),
            *((rf"^norm{s + 1}\.", f"stages.{s}.norm.") for s in range(4)),
            (r"^patch_embed1\.", "stem."),
            (r"\.c\.", ".0."), (r"\.bn\.", ".1."),  # Conv2d_BN's conv and (group) norm
            (r"\.attn\.sr\.", ".mixer.reduce."), (r"\.attn\.norm\.", ".mixer.reduce_norm."),
            (r"\.attn\.f1\.", ".mixer.merge.0."), (r"\.attn\.f2\.", ".mixer.merge.1."),
            (r"\.attn\.f3\.", ".mixer.merge.2."),
            (r"\.attn\.lepe_linear\.", ".mixer.lepe.linear."), (r"\.attn\.lepe_conv\.", ".mixer.lepe.conv."),
            (r"\.attn\.", ".mixer."), (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
        ),
        pos_prefix=(),  # its position embedding covers the stem's grid alone
    ),
    Source(
        name="timm_metaformer",  # timm MetaFormer: poolformer_*, poolformerv2_*, convformer_*, caformer_*
        signature=r"^stages\.\d+\.blocks\.\d+\.mlp\.fc1\.weight$",
        renames=((r"^(stages\.\d+\.blocks\.\d+)\.token_mixer\.", r"\1.mixer."),),
        mixer_family=lambda state, meta, i, prefix: _metaformer_family(state, prefix),
        pos_prefix=(),
        accepts=lambda state: _conv_mlp(state),
        squeeze_1x1=True,
    ),
)


def _fused_qkv(state: StateDict, prefix: str) -> StateDict:
    """``P.qk.*`` (2C rows: q then k) and ``P.v.*`` (C rows) -> ``P.qkv.*`` = [qk; v], the row order of our
    attention's ``qkv`` (q, k, v), for every prefix P matching ``prefix``; a lone ``qk`` or ``v`` is kept."""
    pattern = re.compile(prefix)
    out = dict(state)
    for key in list(state):
        if pattern.match(key) and key.split(".")[-2] == "qk":
            head, tail = key.rsplit(".qk.", 1)
            v = f"{head}.v.{tail}"
            if v in state:
                out[f"{head}.qkv.{tail}"] = torch.cat([out.pop(key), out.pop(v)], dim=0)
    return out


def _conv_mlp(state: Mapping) -> bool:
    """timm's MetaFormer runs its conv stages' MLPs as 1x1 convolutions (4-D weights); ours are Linear."""
    return any(k.startswith("stages.") and k.endswith(".mlp.fc1.weight") and v.ndim == 4
               for k, v in state.items())


def _metaformer_family(state: Mapping, prefix: str) -> str | None:
    """timm MetaFormer blocks hold attention (qkv, proj), SepConv (pwconv1, ...) or pooling (no weights)."""
    if f"{prefix}.mixer.qkv.weight" in state:
        return "attention"
    if f"{prefix}.mixer.pwconv1.weight" in state:
        return "sepconv"
    return None


@dataclass
class InitReport:
    """What a checkpoint load did: every model tensor is loaded or initialised, every checkpoint tensor
    loaded or ignored (with why)."""

    checkpoint: str
    source: str
    weights: str
    loaded: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    resampled: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "source": self.source,
            "weights": self.weights,
            "num_loaded": len(self.loaded),
            "num_initialised": len(self.initialised),
            "num_ignored": len(self.ignored),
            "loaded": list(self.loaded),
            "initialised": list(self.initialised),
            "ignored": dict(self.ignored),
            "resampled": dict(self.resampled),
        }

    def lines(self) -> list[str]:
        out = [
            f"init: {self.checkpoint} ({self.source}, {self.weights} weights): {len(self.loaded)} tensors "
            f"loaded, {len(self.initialised)} initialised, {len(self.ignored)} ignored"
        ]
        out += [f"  initialised: {key}" for key in self.initialised]
        out += [f"  ignored: {key} ({why})" for key, why in self.ignored.items()]
        out += [f"  resampled: {key}: {how}" for key, how in self.resampled.items()]
        return out


# ---------------------------------------------------------------- reading a file
RAW_KEYS = ("model", "state_dict", "module")
WEIGHTS_FIX = "download or copy it again (compare its size or checksum with the source's)"
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")


def read_state_dict(path: str | Path, ema: bool = False) -> tuple[StateDict, dict]:
    """The backbone state dict stored in ``path`` (prefixes stripped) and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"init.checkpoint={str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if ema:
            raise ConfigError(f"init.ema=true but {path} is a safetensors file: it holds one set of weights")
        try:
            return dict(load_file(str(path), device="cpu")), {}
        except Exception:  # noqa: BLE001 - safetensors' own error type differs across its versions
            raise DamagedFileError(
                f"init.checkpoint={str(path)!r}: {path} is truncated, empty or not a safetensors file "
                f"({path.stat().st_size:,} bytes); {WEIGHTS_FIX}") from None
    try:
        obj = load_torch_file(path, "init.checkpoint", WEIGHTS_FIX)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"init.checkpoint={str(path)!r} holds objects other than tensors and containers, which "
            f"torch.load(weights_only=True) refuses ({str(error).splitlines()[0]}). If you trust the file, "
            "re-save its weights alone: torch.save(torch.load(PATH, weights_only=False)['model'], NEW)"
        ) from None
    meta: dict = {}
    if isinstance(obj, Mapping) and "state_dict" in obj and "pytorch-lightning_version" in obj:
        meta = {"mixer_families": obj.get("mixer_families")}
        prefix = "ema.module." if ema else "backbone."
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        if not state:
            what = "no EMA weights (the run had recipe.ema_decay off)" if ema else "no backbone weights"
            raise ConfigError(f"init.checkpoint={str(path)!r} is a Lightning checkpoint with {what}")
        return state, meta
    state = _unwrap(obj, path, ema)
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel model
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, meta


def _unwrap(obj, path: Path, ema: bool) -> StateDict:
    for _ in range(3):  # {"model": {...}} or {"checkpoint": {"state_dict": {...}}}-like nests
        if not isinstance(obj, Mapping):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and not ema:
            return tensors
        wrapper = next((k for k in (EMA_KEYS if ema else RAW_KEYS) if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
        if ema:
            ema = False  # found: what it holds is the state dict
    wanted = f"EMA weights under one of {list(EMA_KEYS)}" if ema else "a state dict of tensors"
    raise ConfigError(f"init.checkpoint={str(path)!r}: found no {wanted} in the file")


def recognise(state: Mapping[str, torch.Tensor], path: str | Path) -> Source:
    for source in SOURCES:
        pattern = re.compile(source.signature)
        if any(pattern.search(key) for key in state) and source.accepts(state):
            return source
    sample = ", ".join(f"{key} {_shape(value)}" for key, value in list(state.items())[:5])
    raise ConfigError(
        f"init.checkpoint={str(path)!r}: not a checkpoint this converter reads (keys: {sample}, ...); "
        f"known sources: {[s.name for s in SOURCES]} (mixerlab/pretrained.py SOURCES says how to add one)"
    )


def _shape(value) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def renamed(state: Mapping[str, torch.Tensor], source: Source) -> StateDict:
    rules = [(re.compile(a), b) for a, b in source.renames]
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        out[key] = value
    return source.rewrite(out)


# ---------------------------------------------------------------- position embeddings
def resample_pos_embed(
    value: torch.Tensor, model: nn.Module, state: Mapping, source: Source
) -> tuple[torch.Tensor, str | None]:
    """The checkpoint's (1, P + g*g, C) position embedding for the model's prefix tokens and grid.

    The checkpoint's prefix count P is that of its prefix tokens present (``source.pos_prefix``), or 0 when
    its embedding covers a square grid only. The grid is resampled bicubically without antialiasing, as
    DeiT's fine-tuning does (``F.interpolate(mode="bicubic", align_corners=False)``), through timm's
    ``resample_abs_pos_embed``; the model's CLS position is the checkpoint's CLS position.
    """
    target = model.pos_embed
    if value.ndim != 3 or value.shape[-1] != target.shape[-1]:
        raise ConfigError(
            f"init.checkpoint: pos_embed has shape {tuple(value.shape)} but the model's is "
            f"{tuple(target.shape)}: another width (backbone.embed_dim)"
        )
    n = value.shape[1]
    src_prefix = sum(name in state for name in source.pos_prefix)
    if math.isqrt(n - src_prefix) ** 2 != n - src_prefix:
        src_prefix = 0
    side = math.isqrt(n - src_prefix)
    if side * side != n - src_prefix:
        raise ConfigError(f"init.checkpoint: pos_embed covers {n} tokens, not prefix tokens + a square grid")
    prefix, grid = value[:, :src_prefix], value[:, src_prefix:]
    # the model's own prefix positions: none when its embedding covers the patches only (ConViT's
    # learned_patches), even though a CLS token joins the blocks later
    new_grid = model.layout.grid
    tgt_prefix = model.layout.num_prefix if getattr(model, "pos_embed_prefix", True) else 0
    notes = []
    if (side, side) != tuple(new_grid):
        grid = resample_abs_pos_embed(
            grid, new_size=list(new_grid), old_size=[side, side], num_prefix_tokens=0,
            interpolation="bicubic", antialias=False,
        )
        notes.append(f"grid {side}x{side} -> {new_grid[0]}x{new_grid[1]} (bicubic)")
    if src_prefix >= tgt_prefix:
        prefix = prefix[:, :tgt_prefix]  # CLS first in both (timm, DeiT): a distillation position dropped
    else:
        prefix = target.detach()[:, :tgt_prefix].clone()
        notes.append("the checkpoint has no prefix position: the CLS position is initialised")
    if src_prefix != tgt_prefix:
        kept = "the CLS position kept first" if tgt_prefix else "the model's covers the patches only"
        notes.append(f"prefix positions {src_prefix} -> {tgt_prefix} ({kept})")
    out = torch.cat([prefix, grid], dim=1).to(target.dtype)
    if out.shape != target.shape:
        raise ConfigError(
            f"init.checkpoint: pos_embed has shape {tuple(value.shape)} in the checkpoint and "
            f"{tuple(target.shape)} in the model, and resampling gave {tuple(out.shape)}: build the backbone "
            "the checkpoint was trained with (backbone.pos_embed, patch_size, data.img_size)"
        )
    return out, "; ".join(notes) or None


# ---------------------------------------------------------------- loading
@dataclass
class PretrainedFile:
    """A weights file read and recognised, not yet loaded: eval.py chooses the image transform by its source
    before the model is built, and the file is read once."""

    path: Path
    state: StateDict  # the source's keys, renamed to ours
    meta: dict
    source: Source
    ema: bool


def read_pretrained(path: str | Path, ema: bool = False) -> PretrainedFile:
    raw, meta = read_state_dict(path, ema)
    source = recognise(raw, path)
    return PretrainedFile(Path(path), renamed(raw, source), meta, source, ema)


def load_pretrained(model: nn.Module, path: str | Path | PretrainedFile, ema: bool = False) -> InitReport:
    """Load ``path`` (or a file :func:`read_pretrained` has read) into ``model`` (a mixerlab
    VisionTransformer) in place and say what happened."""
    file = path if isinstance(path, PretrainedFile) else read_pretrained(path, ema)
    path, state, meta, source, ema = file.path, file.state, file.meta, file.source, file.ema
    report = InitReport(checkpoint=str(path), source=source.name, weights="ema" if ema else "raw")
    target = model.state_dict()
    ignored = [(re.compile(pattern), why) for pattern, why in source.ignored]
    families = mixer_families(model)
    depth = len(families)
    index = {prefix: i for i, prefix in enumerate(block_prefixes(model))}
    new: StateDict = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        why = next((why for pattern, why in ignored if pattern.search(key)), None)
        block = BLOCK_KEY.match(key)
        mixer = MIXER_KEY.match(key)
        if why is None and block and block[1] not in index:
            why = f"the checkpoint has more blocks than backbone.depth={depth} (or backbone.stages) holds"
        if why is None and mixer:
            i = index[mixer[1]]
            theirs = source.mixer_family(state, meta, i, mixer[1])
            if theirs is not None and theirs != families[i]:
                why = f"block {i} holds {families[i]}, not the checkpoint's {theirs}: initialised afresh"
        if why is None and key not in target:
            why = _absent_reason(key, model)
        if (why is None and source.squeeze_1x1 and key in target and value.ndim == 4
                and value.shape[2:] == (1, 1) and value.shape[:2] == target[key].shape):
            value = value.flatten(1)  # a 1x1 convolution is a Linear on tokens
        if why is None and key == "pos_embed":
            value, how = resample_pos_embed(value, model, state, source)
            if how:
                report.resampled[key] = how
        elif why is None and value.shape != target[key].shape:
            if key.startswith("head."):
                why = (f"a classifier for {value.shape[0]} classes; the model has {model.num_classes}: "
                       "a new head is initialised")
            else:
                raise ConfigError(
                    f"init.checkpoint={str(path)!r}: {key} has shape {tuple(value.shape)} in the checkpoint "
                    f"but {tuple(target[key].shape)} in the model; only the position embedding (resampled) "
                    "and the classifier (replaced) may differ: build the backbone the checkpoint was trained "
                    "with (embed_dim, depth, num_heads, mlp_ratio, patch_size, in_chans)"
                )
        if why is not None:
            report.ignored[key] = why
            continue
        new[key] = value.to(target[key].dtype)
    try:
        _, unexpected = model.load_state_dict(new, strict=False)
    except RuntimeError as error:  # a shape check above missed a case: still name the file and the keys
        raise ConfigError(f"init.checkpoint={str(path)!r} does not fit the model: {error}") from None
    assert not unexpected, unexpected  # every key in `new` is one of the model's
    report.loaded = [k for k in target if k in new]
    report.initialised = [k for k in target if k not in new]
    return report


def _absent_reason(key: str, model: nn.Module) -> str:
    head = getattr(model, "head_type", "gap")
    if key == "cls_token":
        return f"the model has no CLS token (backbone.head={head})"
    if key.startswith("head."):
        return f"the model reads out through another head (backbone.head={head}): its head is initialised"
    if key == "pos_embed":
        return "the model has no position embedding (backbone.pos_embed=none)"
    return "the model has no such tensor (its block options differ)"


def apply_init(cfg: Mapping | None, model: nn.Module) -> dict | None:
    """The ``init`` config group: load ``init.checkpoint`` into the freshly built backbone, print and return
    the report (None when no checkpoint is given)."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - {"checkpoint", "ema"}
    if unknown:
        raise ConfigError(f"init has unknown keys {sorted(unknown)}; it takes checkpoint, ema")
    if not cfg.get("checkpoint"):
        if cfg.get("ema"):
            raise ConfigError("init.ema=true needs init.checkpoint=PATH")
        return None
    report = load_pretrained(model, cfg["checkpoint"], ema=bool(cfg.get("ema")))
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print("\n".join(report.lines()), flush=True)
    return report.to_dict()


# ---------------------------------------------------------------- freezing
def freeze(model: nn.Module, prefixes: Iterable[str], key: str = "recipe.freeze") -> list[str]:
    """Stop gradients for parameters named ``prefix`` or ``prefix.*`` (``blocks.0`` is not ``blocks.10``);
    return the frozen names. A prefix that names no parameter is a ConfigError."""
    named = dict(model.named_parameters())
    frozen = []
    for prefix in prefixes:
        hits = [name for name in named if name == prefix or name.startswith(f"{prefix}.")]
        if not hits:
            tops = sorted({name.split(".")[0] for name in named})
            raise ConfigError(f"{key}: {prefix!r} names no parameter; parameter names start with {tops}")
        for name in hits:
            named[name].requires_grad_(False)
        frozen += hits
    return frozen
