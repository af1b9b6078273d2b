"""Config validation: every key, type and value checked before anything is built.

``validate(cfg)`` runs on the composed config at the start of ``train.py``, ``mixerlab.training.train`` and
``scripts/model_info.py``, and raises one :class:`~mixerlab.errors.ConfigError` listing every problem, each
naming the full key, its value and what is allowed (``recipe.lr='abc': a number > 0``). It checks:

1. **Every ``_target_`` node against its constructor** (:mod:`mixerlab.signatures`): a key the constructor
   does not take is unknown (the message lists the ones it takes); a value must match the parameter's
   annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``list[int]``, ``Literal['a', 'b']``,
   ...; an annotation it cannot read accepts anything); a required parameter must be set. So a new mixer,
   data module or constructor option is validated from its signature alone, with no edit here. A nested
   dict option whose keys another class defines (``backbone.block`` -> ``BlockSpec``) is listed in
   :data:`NESTED`.
2. **The value rules below** (:data:`KEY_RULES` by config key, :data:`PARAM_RULES` by constructor
   parameter): ranges and choices that a type annotation cannot say (sizes > 0, probabilities in [0, 1],
   enums). Where the code keeps the allowed values in a tuple, the rule names it
   (``"mixerlab.recipe.DECAYS"``) and reads it from the source, so the two never drift apart.

Adding a key: add the parameter to the constructor the node's ``_target_`` names (with a type annotation;
``Literal[...]`` for a fixed set of strings) and it validates; add a line to ``KEY_RULES`` (any node, by
config key) or ``PARAM_RULES`` (by ``module.Class.param``, wherever the class is used) for a range or
choice; for a node without ``_target_`` (``fastpath``, ``sweep``), add the key to :data:`NODE_KEYS`.

The first pass reads the repository's own constructors from source and imports nothing, so a bad value fails
in about a second; constructors of other packages (``lightning.Trainer``, timm's ``Mixup``) are imported and
checked only when everything else passed (the run imports them next anyway).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from omegaconf import DictConfig, ListConfig, OmegaConf

from mixerlab.errors import ConfigError
from mixerlab.signatures import EMPTY, Signature, Unresolved, module_literal, parse_source, signature

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
# Resolvers whose values are only known at run time: ``precision`` (imports torch to look for a GPU) and
# ``hydra`` (the run directory, unset when a script composes the config): left unresolved and unchecked.
DEFERRED_RESOLVERS = ("precision", "hydra")


class _Deferred:
    def __repr__(self) -> str:
        return "<resolved at run time>"


DEFERRED = _Deferred()


# ---------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """Allowed values of one key: ``types`` (any of int, float, bool, str, list, dict, null), bounds for
    numbers, ``choices`` (a tuple, or the dotted name of the code's tuple), and ``also``: single values
    allowed besides (``-1`` for "no limit", ``"auto"``)."""

    types: tuple[str, ...]
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | str | None = None
    also: tuple = ()
    item: Rule | None = None  # rule for each element of a list

    def allowed_choices(self) -> tuple | None:
        if isinstance(self.choices, str):
            return tuple(module_literal(self.choices))
        return self.choices

    def check(self, value) -> bool:
        if value is DEFERRED or any(value == a and type(value) is type(a) for a in self.also):
            return True
        if value is None:
            return "null" in self.types
        kind = _kind(value)
        if kind not in self.types and not (kind == "int" and "float" in self.types):
            return False
        if kind in ("int", "float"):
            if self.ge is not None and value < self.ge or self.gt is not None and value <= self.gt:
                return False
            if self.le is not None and value > self.le or self.lt is not None and value >= self.lt:
                return False
        choices = self.allowed_choices()
        if choices is not None and value not in choices:
            return False
        if kind == "list" and self.item is not None:
            return all(self.item.check(v) for v in value)
        return True

    def describe(self) -> str:
        choices = self.allowed_choices()
        if choices is not None:
            text = "one of " + ", ".join(str(c) for c in choices)
        else:
            names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                     "list": "a list", "dict": "a mapping", "null": "null"}
            kinds = [k for k in self.types if k != "null" and not (k == "int" and "float" in self.types)]
            text = " or ".join(names[k] for k in kinds)
            bounds = [f"{op} {_num(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                      ("<", self.lt)) if v is not None]
            if bounds:
                text += " " + " and ".join(bounds)
            if self.item is not None:
                text += " of " + self.item.describe()
        extra = [repr(a) if isinstance(a, str) else str(a) for a in self.also]
        if "null" in self.types:
            extra.append("null")
        return text + (f" (or {', '.join(extra)})" if extra else "")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def Int(ge: int | None = None, null: bool = False, also: tuple = ()) -> Rule:
    return Rule(("int", "null") if null else ("int",), ge=ge, also=also)


def Number(ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, null: bool = False) -> Rule:
    return Rule(("float", "null") if null else ("float",), ge=ge, gt=gt, le=le, lt=lt)


def Choice(choices: tuple | str, null: bool = False) -> Rule:
    return Rule(("str", "null") if null else ("str",), choices=choices)


PROBABILITY = Number(ge=0, le=1)
DROP_RATE = Number(ge=0, lt=1)
POSITIVE = Int(ge=1)
WORKERS = Int(ge=0, null=True, also=("auto",))  # auto / null: what the machine has (data/workers.py)
RANGE = Rule(("list",), item=Number(gt=0))

# By config key: ``*`` is one level (a key or a list index), ``**`` any number of levels. The first rule
# whose pattern matches a key applies; the node's constructor annotation is checked as well.
KEY_RULES: dict[str, Rule] = {
    "seed": Int(ge=0),
    # data: every data=<option> shares these (data/base.py)
    "data.img_size": POSITIVE,
    "data.in_chans": POSITIVE,
    "data.num_classes": Int(ge=2),
    "data.batch_size": POSITIVE,
    "data.eval_batch_size": Int(ge=1, null=True),
    "data.global_batch": Int(ge=1, null=True),
    "data.num_workers": WORKERS,
    "data.repeated_aug": POSITIVE,
    "data.crop_pct": Number(gt=0, le=1),
    "data.bad_files": Choice("data.imagenet_folder.BAD_FILE_POLICIES"),
    "data.order": Choice("data.imagenet_ffcv.ORDERS"),
    "data.batches_ahead": POSITIVE,
    "data.background_batches": Int(ge=0),
    "data.samples_per_epoch": POSITIVE,
    "data.train_samples": Int(ge=2),
    "data.val_samples": POSITIVE,
    "data.num_train": POSITIVE,
    "data.num_val": POSITIVE,
    "data.bank_size": POSITIVE,
    "data.grid_step": POSITIVE,
    "data.augment.hflip": PROBABILITY,
    "data.augment.re_prob": PROBABILITY,
    "data.augment.re_count": Int(ge=0),
    "data.augment.color_jitter": Number(ge=0, null=True),
    "data.augment.scale": RANGE,
    "data.augment.ratio": RANGE,
    "data.mean": RANGE,
    "data.std": RANGE,
    # backbone (mixerlab/backbone.py)
    "backbone.patch_size": POSITIVE,
    "backbone.embed_dim": POSITIVE,
    "backbone.depth": POSITIVE,
    "backbone.num_heads": POSITIVE,
    "backbone.mlp_ratio": Number(gt=0),
    "backbone.drop_rate": DROP_RATE,
    "backbone.drop_path_rate": DROP_RATE,
    "backbone.head": Choice("mixerlab.backbone.HEADS"),
    "backbone.lama_heads": POSITIVE,
    "backbone.lama_context": Choice("mixerlab.lama.CONTEXTS"),
    "backbone.inner_dim": POSITIVE,  # TNT (mixerlab/tnt.py)
    "backbone.inner_heads": POSITIVE,
    "backbone.pixel_stride": POSITIVE,
    "backbone.pos_embed": Choice("mixerlab.backbone.POS_EMBEDS"),
    "backbone.schedule.*.layers": POSITIVE,
    "backbone.stages.*.depth": POSITIVE,
    "backbone.stages.*.dim": POSITIVE,
    "backbone.classifier": Choice("mixerlab.metaformer.CLASSIFIERS"),
    "backbone.window": POSITIVE,  # SG-Former (mixerlab/sgformer.py)
    "backbone.stages.*.sr_ratio": POSITIVE,
    "backbone.**.res_scale": Number(gt=0, null=True),
    "backbone.**.layer_scale": Number(gt=0, null=True),
    # recipe (mixerlab/recipe.py)
    "recipe.lr": Number(gt=0),
    "recipe.lr_batch_base": POSITIVE,
    "recipe.min_lr": Number(ge=0),
    "recipe.warmup_lr": Number(ge=0),
    "recipe.warmup_epochs": Number(ge=0),
    "recipe.decay": Choice("mixerlab.recipe.DECAYS"),
    "recipe.weight_decay": Number(ge=0),
    "recipe.opt_eps": Number(gt=0),
    "recipe.betas": Rule(("list",), item=Number(ge=0, lt=1)),
    "recipe.opt_impl": Choice("mixerlab.fastpath.OPT_IMPLS"),
    "recipe.label_smoothing": Number(ge=0, lt=1),
    "recipe.mixup.prob": PROBABILITY,
    "recipe.mixup.switch_prob": PROBABILITY,
    "recipe.mixup.mixup_alpha": Number(ge=0),
    "recipe.mixup.cutmix_alpha": Number(ge=0),
    "recipe.mixup.mode": Choice(("batch", "pair", "elem")),
    "recipe.ema_decay": Number(gt=0, lt=1, null=True),
    "recipe.clip_grad": Number(gt=0, null=True),
    "recipe.nan_policy": Choice("mixerlab.nonfinite.NAN_POLICIES"),
    # trainer (lightning.Trainer; -1 = no limit)
    "trainer.max_epochs": Int(ge=1, null=True, also=(-1,)),
    "trainer.min_epochs": Int(ge=0, null=True),
    "trainer.max_steps": Int(ge=1, also=(-1,)),
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.num_nodes": POSITIVE,
    "trainer.devices": Rule(("int", "str", "list"), ge=-1),
    # a name Lightning knows, or a _target_ node Hydra builds (found by the config fuzzer: a list ended in a
    # raw ValueError from the Trainer)
    "trainer.strategy": Rule(("str", "dict")),
    "trainer.accelerator": Rule(("str", "dict")),
    "trainer.check_val_every_n_epoch": Int(ge=1, null=True),
    "trainer.log_every_n_steps": Int(ge=1, null=True),
    "trainer.num_sanity_val_steps": Int(ge=-1, null=True),
    "trainer.limit_train_batches": Number(gt=0, null=True),
    "trainer.limit_val_batches": Number(ge=0, null=True),
    "trainer.precision": Rule(("str", "int"), choices=(
        "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
        "32-true", "64-true", 64, 32, 16, "64", "32", "16", "bf16")),
    # fastpath (mixerlab/fastpath.py)
    "fastpath.compile.enabled": Rule(("bool",), also=("auto",)),
    "fastpath.compile.mode": Choice("mixerlab.fastpath.COMPILE_MODES"),
    "fastpath.matmul_precision": Choice(("highest", "high", "medium")),
    "fastpath.sdpa_backends": Rule(("list", "null"), item=Choice("mixerlab.fastpath.SDPA_BACKENDS")),
    "fastpath.cpu_linear": Choice("mixerlab.fastpath.CPU_LINEAR"),
    "fastpath.cpu_threads": Int(ge=1, null=True, also=("auto",)),
    "callbacks.checkpoint.every_n_steps": Int(ge=0),
    "callbacks.checkpoint.keep_previous": Rule(("bool",)),
    "sweep.report": Rule(("bool",)),
    # mixers (any mixer node: mixer, backbone.schedule[i].mixer, ...)
    "**.num_heads": POSITIVE,
    "**.num_tokens": Int(ge=1, null=True),
    "**.mlp_ratio": Number(gt=0),
    "**.attn_drop": DROP_RATE,
    "**.proj_drop": DROP_RATE,
}

# By constructor parameter (``module.Class.param``): where a parameter's meaning is its class's own.
PARAM_RULES: dict[str, Rule] = {
    "mixers.fibottention.Fibottention.variant": Choice("mixers.fibottention.VARIANTS"),
    "mixers.fibottention.Fibottention.sparse_backend": Choice("mixers.fibottention.BACKENDS"),
    "mixers.fibottention.Fibottention.wmin": POSITIVE,
    "mixers.fibottention.Fibottention.wmax": Int(ge=1, null=True),
    "mixers.afno.AFNO.num_blocks": POSITIVE,
    "mixers.afno.AFNO.hidden_size_factor": POSITIVE,
    "mixers.afno.AFNO.sparsity_threshold": Number(ge=0),
    "mixers.metaformer.Pooling.pool_size": POSITIVE,
    "mixers.feedforward.TokenMLP.drop": DROP_RATE,
    "mixerlab.backbone.BlockSpec.style": Choice("mixerlab.backbone.BlockSpec.STYLES"),
    "mixerlab.backbone.BlockSpec.order": Choice("mixerlab.backbone.BlockSpec.ORDERS"),
    "mixerlab.backbone.BlockSpec.norm": Choice("mixerlab.backbone.BlockSpec.NORMS"),
    "mixerlab.metaformer.StageBlock.norm": Choice("mixerlab.metaformer.StageBlock.NORMS"),
    "mixerlab.metaformer.StageBlock.mlp_act": Choice(("starrelu", "gelu")),
    "mixerlab.metaformer.StageBlock.mlp_ratio": Number(gt=0),
    "data.digit_tasks.DigitTasksDataModule.task": Choice(("odd_one_out", "sum_mod10", "same_different",
                                                          "marker")),
}

# A dict option whose keys are another class's constructor (``owner.param`` -> class), or a fixed tuple.
NESTED: dict[str, str | tuple] = {
    "mixerlab.backbone.VisionTransformer.block": "mixerlab.backbone.BlockSpec",
    "mixerlab.metaformer.MetaFormer.block": "mixerlab.metaformer.StageBlock",
    "data.imagenet_folder.ImageNetFolderDataModule.augment": "data.transforms.AugmentConfig",
    "data.digits.DigitsDataModule.augment": "data.transforms.AugmentConfig",
    "data.imagenet_ffcv.ImageNetFFCVDataModule.augment": "data.imagenet_ffcv.AUGMENT_KEYS",
    "data.imagenet_ffcv.ImageNetFFCVDataModule.progressive": "data.imagenet_ffcv.ProgressiveResolution",
    "mixerlab.recipe.Recipe.mixup": "timm.data.Mixup",
    "data.fake_imagenet.FakeImageNetDataModule.fixture": "data.fake_imagenet.write_fake_imagenet",
}

# Keys of nodes without a ``_target_`` (None: any keys). Segments of a schedule take these three keys.
NODE_KEYS: dict[str, tuple | None] = {
    "fastpath": ("compile", "matmul_precision", "cudnn_benchmark", "sdpa_backends", "cpu_linear",
                 "cpu_threads"),
    "fastpath.compile": ("enabled", "mode", "fullgraph", "dynamic"),
    "sweep": ("name", "report"),
    "backbone.schedule.*": ("layers", "mixer", "block"),
    "backbone.schedule.*.block": "mixerlab.backbone.BlockSpec",
    # metaformer.STAGE_KEYS and sgformer.STAGE_KEYS: each backbone refuses the keys only the other takes
    "backbone.stages.*": ("depth", "dim", "mixer", "mixer_options", "block",
                          "num_heads", "sr_ratio", "merge"),
    "backbone.stages.*.block": "mixerlab.metaformer.StageBlock",
}

# Constructor arguments the code passes, never the config (mixers/contract.py; training.py).
SUPPLIED: dict[str, tuple[str, ...]] = {
    "mixer": ("dim", "layout", "layer_index", "num_layers"),
    "backbone.schedule.*.mixer": ("dim", "layout", "layer_index", "num_layers"),
    "backbone.stages.*.mixer": ("dim", "layout", "layer_index", "num_layers"),
    "backbone": ("mixer",),
    "recipe": ("backbone",),
    "recipe.mixup": ("label_smoothing", "num_classes"),
    "data.fixture": ("out", "classes"),
    "trainer": ("logger", "callbacks", "plugins"),
}


# ---------------------------------------------------------------------------------------------- matching
@cache
def _regex(pattern: str) -> re.Pattern:
    parts = []
    for segment in pattern.split("."):
        if segment == "**":
            parts.append(r"(?:[^.]+\.)*")
        else:
            parts.append((r"[^.]+" if segment == "*" else re.escape(segment)) + r"\.")
    text = "".join(parts)
    return re.compile(text.removesuffix(r"\.") + r"\Z")


def _lookup(table: dict, key: str):
    for pattern, value in table.items():
        if _regex(pattern).match(key):
            return value
    return None


def display(key: str) -> str:
    """``backbone.schedule.0.mixer`` -> ``backbone.schedule[0].mixer``."""
    return ".".join(f"[{p}]" if p.isdigit() else p for p in key.split(".")).replace(".[", "[")


# ---------------------------------------------------------------------------------------------- annotations
_SEQUENCES = {"list", "List", "Sequence", "Iterable", "MutableSequence", "tuple", "Tuple", "Collection"}
_MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping", "DictConfig"}
_PRIMITIVES = {"int", "float", "bool", "str", "None", "NoneType"}


def matches(value, annotation: str | None) -> bool:
    """Whether a config value fits a type annotation (source text); an annotation it cannot read fits."""
    if annotation is None or value is DEFERRED:
        return True
    try:
        node = parse_source(annotation, mode="eval").body
    except SyntaxError:
        return True
    return _matches(value, node) is not False


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _matches(value, node: ast.AST) -> bool | None:  # None: unknown
    if value is DEFERRED:
        return True
    if isinstance(node, ast.Constant):
        if node.value is None:
            return value is None
        if isinstance(node.value, str):  # a forward reference
            return None if not matches(value, node.value) else True
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _any(value, [node.left, node.right])
    name = _name(node)
    if name is not None:
        return _primitive(value, name)
    if isinstance(node, ast.Subscript):
        base = _name(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional":
            return True if value is None else _matches(value, args[0])
        if base == "Union":
            return _any(value, args)
        if base == "Literal":
            try:
                return value in [ast.literal_eval(a) for a in args]
            except ValueError:
                return None
        if base in _SEQUENCES:
            if not isinstance(value, (list, tuple)):
                return False
            if base in ("tuple", "Tuple") and not (len(args) == 2 and isinstance(args[1], ast.Constant)
                                                   and args[1].value is Ellipsis):
                if len(args) != len(value):
                    return False
                results = [_matches(v, a) for v, a in zip(value, args, strict=True)]
            else:
                results = [_matches(v, args[0]) for v in value]
            return False if False in results else (None if None in results else True)
        if base in _MAPPINGS:
            return isinstance(value, dict)
    return None


def _any(value, nodes) -> bool | None:
    results = [_matches(value, n) for n in nodes]
    return True if True in results else (None if None in results else False)


def _primitive(value, name: str) -> bool | None:
    if name in ("None", "NoneType"):
        return value is None
    if name == "bool":
        return isinstance(value, bool)
    if name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "str":
        return isinstance(value, str)
    if name in _SEQUENCES:
        return isinstance(value, (list, tuple))
    if name in _MAPPINGS:
        return isinstance(value, dict)
    if name in ("Any", "object"):
        return True
    if name in ("Path", "PathLike", "_PATH"):  # os.fspath() takes text, never a number, list or mapping
        return isinstance(value, str)
    return None  # a class (TokenLayout, nn.Module, Callable, ...): the constructor will say


# ---------------------------------------------------------------------------------------------- resolution
def resolved(cfg: DictConfig, problems: list[str], sources: dict[str, str] | None = None) -> dict:
    """The config as plain containers, each interpolation resolved on its own (a failure names its key),
    run-time resolvers (:data:`DEFERRED_RESOLVERS`) left as :data:`DEFERRED`; the ``hydra`` node left out.
    ``sources`` collects each interpolated key's expression (``data.seed`` -> ``${seed}``)."""

    def walk(node, prefix: str):
        keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        out = [] if isinstance(node, ListConfig) else {}
        for key in keys:
            if not prefix and key == "hydra":
                continue
            full = f"{prefix}.{key}" if prefix else str(key)
            raw = node._get_node(key)
            text = raw._value() if raw is not None else None
            interpolation = OmegaConf.is_interpolation(node, key)
            if interpolation and any(f"${{{r}:" in str(text) for r in DEFERRED_RESOLVERS):
                value = DEFERRED
            else:
                try:
                    value = node[key]
                except Exception as error:  # missing key, env var, bad interpolation, ???
                    problems.append(f"{display(full)}: {type(error).__name__}: {str(error).splitlines()[0]}")
                    value = DEFERRED
            if interpolation and sources is not None:
                sources[full] = str(text)
            if isinstance(value, (DictConfig, ListConfig)):
                value = walk(value, full)
            if isinstance(out, list):
                out.append(value)
            else:
                out[str(key)] = value
        return out

    return walk(cfg, "")


# ---------------------------------------------------------------------------------------------- the walk
@dataclass
class _Pending:
    key: str
    node: dict
    target: str


class Validator:
    def __init__(self, imports: bool) -> None:
        self.imports = imports
        self.problems: list[str] = []
        self.pending: list[_Pending] = []  # targets that need an import: checked after the fast pass
        self.sources: dict[str, str] = {}  # interpolated keys -> their expression

    def problem(self, key: str, value, allowed: str) -> None:
        source = f" (from {self.sources[key]})" if key in self.sources else ""
        self.problems.append(f"{display(key)}={_show(value)}{source}: {allowed}")

    def leaf_rule(self, key: str, value, param_rule: Rule | None = None) -> bool:
        """Apply the value rules to one key; False when one failed (its annotation is not checked then)."""
        rule = param_rule or _lookup(KEY_RULES, key)
        if rule is not None and not rule.check(value):
            self.problem(key, value, rule.describe())
            return False
        return True

    def walk(self, value, key: str) -> None:
        if isinstance(value, dict) and "_target_" in value:
            self.target_node(value, key)
        elif isinstance(value, dict):
            keys = _lookup(NODE_KEYS, key) if key else None
            if isinstance(keys, str):
                self.nested_node(value, key, keys)
                return
            for child, v in value.items():
                full = f"{key}.{child}" if key else child
                if keys is not None and child not in keys:
                    self.problem(full, v, f"unknown key; {display(key)} takes {', '.join(keys)}")
                    continue
                if self.leaf_rule(full, v):
                    self.walk(v, full)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                full = f"{key}.{i}"
                if self.leaf_rule(full, v):
                    self.walk(v, full)

    def signature_or_defer(self, target: str, key: str, node: dict) -> Signature | None:
        try:
            return signature(target, imports=self.imports)
        except Unresolved:
            self.pending.append(_Pending(key, node, target))
            return None
        except (ImportError, AttributeError, ValueError) as error:
            self.problem(f"{key}._target_" if key else "_target_", target,
                         f"cannot be imported ({type(error).__name__}: {error})")
            return None

    def target_node(self, node: dict, key: str) -> None:
        target = node["_target_"]
        if not isinstance(target, str):
            self.problem(f"{key}._target_", target, "a dotted path to a class or function")
            return
        self.signature_node(node, key, self.signature_or_defer(target, key, node), target)

    def signature_node(self, node: dict, key: str, sig: Signature | None, target: str) -> None:
        if sig is None:  # deferred to the second pass: meanwhile the value rules check its keys
            for child, value in node.items():
                if child not in HYDRA_KEYS and self.leaf_rule(f"{key}.{child}", value):
                    self.walk(value, f"{key}.{child}")
            return
        supplied = _lookup(SUPPLIED, key) or ()
        for child, value in node.items():
            full = f"{key}.{child}"
            if child in HYDRA_KEYS:
                continue
            if child in supplied:
                self.problem(full, value, f"set by the code when it builds {display(key)}, not by the config")
                continue
            param = sig.params.get(child)
            if param is None:
                if not sig.open:
                    takes = [p for p in sig.params if p not in supplied]
                    self.problem(full, value, f"unknown key; {target} takes: {', '.join(takes)}")
                continue
            param_rule = PARAM_RULES.get(f"{param.owner}.{child}")
            rule = param_rule or _lookup(KEY_RULES, full)
            if not self.leaf_rule(full, value, rule):
                continue
            if rule is None and not matches(value, param.annotation):  # a rule says more than a type
                self.problem(full, value, f"{param.annotation} (the type of {param.owner}'s {child})")
                continue
            nested = NESTED.get(f"{param.owner}.{child}")
            if nested is not None and isinstance(value, dict):
                self.nested_node(value, full, nested)
            else:
                self.walk(value, full)
        if "_partial_" not in node or not node.get("_partial_"):
            for name, param in sig.params.items():
                if param.default is EMPTY and name not in node and name not in supplied:
                    self.problems.append(f"{display(key)}.{name} is required by {target} but not set")

    def nested_node(self, value: dict, key: str, schema: str | tuple) -> None:
        """A dict whose keys are a class's constructor, or a tuple of keys (``module.CONSTANT``)."""
        keys = schema if isinstance(schema, tuple) else None
        if keys is None and schema.rsplit(".", 1)[-1].isupper():
            keys = tuple(module_literal(schema))
        if keys is not None:
            for child, v in value.items():
                if child not in keys:
                    self.problem(f"{key}.{child}", v, f"unknown key; {display(key)} takes {', '.join(keys)}")
                else:
                    self.leaf_rule(f"{key}.{child}", v)
            return
        self.signature_node(value, key, self.signature_or_defer(schema, key, value), schema)

    def run_pending(self) -> None:
        self.imports, pending, self.pending = True, self.pending, []
        for item in pending:
            if item.node.get("_target_") == item.target:
                self.target_node(item.node, item.key)
            else:
                self.nested_node(item.node, item.key, item.target)


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value).replace("True", "true").replace(
        "False", "false").replace("None", "null")


def check(cfg: DictConfig, imports: bool = True) -> list[str]:
    """Every problem of ``cfg`` as a line naming its key; ``imports=False``: the import-free pass only."""
    validator = Validator(imports=False)
    container = resolved(cfg, validator.problems, validator.sources)
    validator.walk(container, "")
    if not validator.problems and imports:
        validator.run_pending()
    return validator.problems


def validate(cfg: DictConfig, imports: bool = True) -> None:
    """Raise one ConfigError listing every problem of the composed config (see the module docstring)."""
    problems = check(cfg, imports=imports)
    if problems:
        head = "invalid config" + (f" ({len(problems)} problems)" if len(problems) > 1 else "")
        raise ConfigError(head + ":\n  " + "\n  ".join(problems))


def iter_targets(cfg: DictConfig) -> Iterator[str]:
    """Every ``_target_`` in a composed config (tests compare the two signature readers on them)."""
    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("_target_"), str):
                yield value["_target_"]
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, list):
            for v in value:
                yield from walk(v)

    yield from walk(resolved(cfg, []))
