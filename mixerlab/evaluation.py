"""Evaluate a run, or any weights file, on any data config without training.

    python eval.py run=DIR
        <run>/config.yaml + checkpoints/last.ckpt  ->  backbone with the EMA weights when the run kept them
    python eval.py experiment=PRESET init.checkpoint=FILE
        the preset's backbone  <-  FILE through mixerlab/pretrained.py (timm/DeiT/ConViT or a mixerlab .ckpt)
    then
        -> the backbone in its deployment form (mixers.contract.fuse_for_inference: FFNified's RepVGG
           branches fused)
        -> every EvalSet of the chosen data (data/shifted.py, data/digits_c.py; any training data module:
           its validation split) -> top-1 / top-5 counted once per image across every process
        -> eval.json (merged with the sets earlier evaluations wrote) and, with erf.layers, erf/, in the run
           directory, or for a weights file in a new evaluation directory runs/eval/<preset>/<id> (``out=``)

A weights file is read the way its source's own evaluation reads images (``transform=auto``): a timm file
(source ``timm_*``) evaluated in a preset with a timm counterpart (``timm_counterparts`` in conf/eval.yaml)
takes crop_pct, interpolation, mean and std from timm's ``resolve_data_config`` for that model, so top-1
equals timm's own pipeline image for image (DeiT's timm configs crop 0.9 where the DeiT recipe's data config
crops 0.875). ``data.crop_pct=`` etc. on the command line still win; ``transform=data`` keeps the data
config's values throughout. eval.json records which was used (``transform``).

Exactly once: a distributed sampler pads each rank's share to the same length with repeated images,
which would count some images twice. Lightning's ``UnrepeatedDistributedSampler`` deals the indices
without padding (ranks may get one image more or less) and the counts are summed over the processes
(torchmetrics' ``sum`` reduction), so ``images`` in eval.json is the size of the set whatever the world size.

Corruption error (the -C sets): for each corruption c, ``E_c`` = top-1 error (%) averaged over the
severities. ImageNet-C: ``CE_c = E_c / E_c(AlexNet)`` and ``mCE = mean_c CE_c`` (x100, as published), with
AlexNet's errors from data/corruptions.py. Digits-C has no AlexNet: it reports ``mce_unnormalised =
mean_c E_c`` (%) and the relative figure ``mean_c E_c - E_clean`` when the clean set was evaluated before.
"""

from __future__ import annotations

import fcntl
import json
import logging
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics import Metric

from data.corruptions import ALEXNET_ERROR
from data.shifted import EvalSet
from mixerlab.errors import ConfigError, DamagedFileError
from mixerlab.run import SUMMARY_FIX, atomic_write_text
from mixerlab.storage import disk_full, load_torch_file, read_config_file, read_derived_json, read_json_file
from mixers.contract import fuse_for_inference

UNSET = (None, "", "None", "null")

log = logging.getLogger("mixerlab")
EVAL_FILE = "eval.json"
MODEL_INPUT_KEYS = ("img_size", "in_chans", "num_classes", "mean", "std")
CLEAN = "clean"  # the eval.json key of the run's own validation data
CHECKPOINT_FIX = ("checkpoints are written atomically, so it was damaged after it was written (a copy cut "
                  "short?): copy it again from where the run trained")


# ---------------------------------------------------------------------------------------------- the run
def resolve_run(run: str | None) -> tuple[Path, Path]:
    """A run directory, or a checkpoint inside ``<run>/checkpoints/`` -> (run directory, checkpoint).

    For a run directory, the newest of its checkpoints that loads (last.ckpt, else previous.ckpt; one
    warning line says when last.ckpt is passed over); a checkpoint named on the command line is that one."""
    from mixerlab.checkpointing import resume_point

    if run in (None, "", "None", "null"):
        raise ConfigError("run is not set: pass run=runs/<experiment>/<run id> (a run directory) or a .ckpt")
    path = Path(run).expanduser().resolve()
    run_dir = (path.parent.parent if path.parent.name == "checkpoints" else path.parent) if path.is_file() \
        else path
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run={run}: {run_dir} has no config.yaml (not a mixerlab run directory)")
    if path.is_file():
        return run_dir, path
    point = resume_point(run_dir / "checkpoints", CHECKPOINT_FIX)
    if point is None:
        raise ConfigError(f"run={run}: no checkpoint at {run_dir / 'checkpoints' / 'last.ckpt'} (has the run "
                          "trained an epoch yet?)")
    if point.passed_over:
        log.warning("%s", point.fallback_line())
    return run_dir, point.path


def run_config(run_dir: Path) -> DictConfig:
    return read_config_file(run_dir / "config.yaml", "the run's config",
                            "it is the run's record of its settings: restore it from a copy, or re-create it "
                            "with the training command's overrides (train.py ... --cfg job)")


def eval_data_config(run_cfg: DictConfig, data_cfg: DictConfig | None) -> DictConfig:
    """The eval set's config with the model's input settings (size, channels, classes, normalisation) from
    the run: a set is read the way the model learned to read images. ``None``: the run's own data."""
    if data_cfg is None:
        return run_cfg.data
    merged = OmegaConf.merge(data_cfg, {k: run_cfg.data[k] for k in MODEL_INPUT_KEYS if k in run_cfg.data})
    return merged


def load_weights(backbone: nn.Module, ckpt: Path, weights: str = "auto") -> dict:
    """Load the EMA weights (``auto``: if the checkpoint has them; ``ema``) or the trained ones (``raw``)."""
    if weights not in ("auto", "ema", "raw"):
        raise ConfigError(f"weights={weights!r}: auto (EMA when the run kept one), ema or raw")
    checkpoint = load_torch_file(ckpt, "run checkpoint", CHECKPOINT_FIX)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DamagedFileError(f"run checkpoint: {ckpt} is not a mixerlab run checkpoint (no state_dict); "
                               f"{CHECKPOINT_FIX}")
    state = checkpoint["state_dict"]
    has_ema = any(k.startswith("ema.module.") for k in state)
    if weights == "ema" and not has_ema:
        raise ConfigError(f"weights=ema but {ckpt} holds no EMA weights (recipe.ema_decay was unset)")
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    prefix = "ema.module." if use == "ema" else "backbone."
    try:
        backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    except RuntimeError as error:  # missing, unexpected or mis-shaped keys: another model's weights
        first = (str(error).split("\n\t", 2)[1] if "\n\t" in str(error) else str(error))
        first = first if len(first) <= 160 else first[:160] + " ..."
        raise DamagedFileError(
            f"run checkpoint: {ckpt} holds weights of a different model than the run's config.yaml builds "
            f"({first}); evaluate it with the config it was trained with") from None
    return {"weights": use, "checkpoint": str(ckpt), "step": int(checkpoint.get("global_step", 0)),
            "epoch": int(checkpoint.get("epoch", 0))}


# ---------------------------------------------------------------------------------------------- counting
class TopKCounts(Metric):
    """Right-at-top-1, right-at-top-5 and image counts, summed over processes (each image counted once).

    Hand-written rather than torchmetrics' accuracy: ReaL's targets are label sets and A/R score a subset
    of logits; the counts also give eval.json its exact image total.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("top1", "top5", "images"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, multi_label: bool = False) -> None:
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices  # (B, k)
        if multi_label:  # targets (B, classes) 0/1; rows without a label never reach here
            hits = targets.gather(1, top).bool()
        else:
            hits = top == targets[:, None]
        self.top1 += hits[:, 0].sum()
        self.top5 += hits.any(dim=1).sum()
        self.images += torch.tensor(logits.shape[0], device=self.images.device)

    def compute(self) -> dict:
        n = int(self.images)
        return {"top1": 100.0 * int(self.top1) / max(n, 1), "top5": 100.0 * int(self.top5) / max(n, 1),
                "images": n}


def loader(fabric: L.Fabric, dataset, batch_size: int, num_workers: int) -> DataLoader:
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    sampler = UnrepeatedDistributedSampler(dataset, num_replicas=fabric.world_size, rank=fabric.global_rank,
                                           shuffle=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=fabric.device.type == "cuda")


@torch.no_grad()  # not inference_mode: torch 2.5's gloo all_gather refuses the metric's inference tensors
def score(fabric: L.Fabric, model: nn.Module, eval_set: EvalSet, batch_size: int, num_workers: int,
          predictions: list | None = None) -> dict:
    """Top-1/top-5 of ``model`` on ``eval_set``; with a ``predictions`` list (one process), each image's
    ``(index, target, top-5)`` is appended to it, in dataset order."""
    counts = TopKCounts().to(fabric.device)
    mask = None
    t0 = time.perf_counter()
    for images, targets in loader(fabric, eval_set.dataset, batch_size, num_workers):
        images, targets = images.to(fabric.device), targets.to(fabric.device)
        with fabric.autocast():
            logits = model(images).float()
        if eval_set.class_subset is not None:  # only the subset's logits compete
            if mask is None:
                mask = torch.full((logits.shape[-1],), float("-inf"), device=logits.device)
                mask[eval_set.class_subset] = 0.0
            logits = logits + mask
        counts.update(logits, targets, eval_set.multi_label)
        if predictions is not None:
            top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices.tolist()
            for target, row in zip(targets.tolist(), top, strict=True):
                predictions.append((len(predictions), target, row))
    result = counts.compute()  # all-reduced over the processes
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    return result


def corruption_summary(results: dict[tuple[str, int], dict], clean_top1: float | None,
                       normalise: str) -> dict:
    """Per-corruption errors averaged over severities, and mCE (see the module docstring)."""
    by_corruption: dict[str, dict[str, float]] = {}
    for (corruption, severity), r in results.items():
        by_corruption.setdefault(corruption, {})[str(severity)] = round(r["top1"], 3)
    errors = {c: 100.0 - statistics.fmean(s.values()) for c, s in by_corruption.items()}
    out = {
        "top1": round(statistics.fmean(r["top1"] for r in results.values()), 3),
        "images": sum(r["images"] for r in results.values()),
        "corruptions": by_corruption,
        "error": {c: round(e, 3) for c, e in errors.items()},
        "normalisation": normalise,
    }
    if normalise == "alexnet":
        ce = {c: 100.0 * e / (100.0 * ALEXNET_ERROR[c]) for c, e in errors.items()}
        out["ce"] = {c: round(v, 3) for c, v in ce.items()}
        out["mce"] = round(statistics.fmean(ce.values()), 3)
        out["mce_note"] = ("CE_c = mean-severity top-1 error / AlexNet's (Hendrycks & Dietterich 2019), "
                           f"{len(ce)} of 15 corruptions")
    else:
        out["mce_unnormalised"] = round(statistics.fmean(errors.values()), 3)
        if clean_top1 is not None:
            out["mce_relative"] = round(statistics.fmean(errors.values()) - (100.0 - clean_top1), 3)
    return out


# ---------------------------------------------------------------------------------------------- eval.json
@contextmanager
def locked(run_dir: Path):
    """One writer of eval.json at a time (several evals of one run may run at once, e.g. a multirun)."""
    try:
        lock = open(run_dir / ".eval.lock", "w")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as error:  # a full disk can refuse even an empty file's directory entry
        raise (disk_full(error, run_dir / ".eval.lock") or error) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_eval(run_dir: Path) -> dict:
    """The run's eval.json, ``{}`` if none. A damaged one is an error, not an empty record: merging into it
    would silently drop every set it held."""
    path = Path(run_dir) / EVAL_FILE
    return read_json_file(path, "evaluation record", f"move it aside (mv {path} {path}.damaged) and run "
                          "eval.py again for each set it held") or {}


def merge_eval(run_dir: Path, key: str, entry: dict, meta: dict) -> dict:
    """Add or replace set ``key`` in ``<run>/eval.json``, keeping every other set; atomic."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)  # a weights file's new evaluation directory
    with locked(run_dir):
        record = read_eval(run_dir)
        record.update({k: v for k, v in meta.items()})
        record.setdefault("sets", {})[key] = entry
        atomic_write_text(Path(run_dir) / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    return record


# ---------------------------------------------------------------------------------------------- what
@dataclass
class Evaluated:
    """What one eval.py command evaluates: where eval.json goes, the eval set's config, how to build the
    model with its weights, and eval.json's metadata."""

    out_dir: Path
    data_cfg: DictConfig
    build: Callable[[], tuple[nn.Module, dict]]
    transform: dict
    record: dict | None = None  # a weights file's resolved model config: <eval dir>/eval_config.yaml


def evaluated(cfg: DictConfig) -> Evaluated:
    """``run=DIR`` or ``experiment=PRESET init.checkpoint=FILE``, checked before anything expensive."""
    init = cfg.get("init") or {}
    checkpoint, experiment = init.get("checkpoint"), cfg.get("experiment_choice")
    run = cfg.get("run")
    if run not in UNSET and checkpoint not in UNSET:
        raise ConfigError(
            f"run={run} and init.checkpoint={checkpoint} are both set: evaluate a run directory (run=DIR) or "
            "a weights file (experiment=PRESET init.checkpoint=FILE), one per command"
        )
    if checkpoint in UNSET:
        if run in UNSET:
            raise ConfigError(
                "nothing to evaluate: pass run=runs/<experiment>/<run id> (a run directory or its .ckpt), or "
                "experiment=PRESET init.checkpoint=FILE (a timm/DeiT/ConViT or mixerlab weights file)"
            )
        if experiment not in UNSET:
            raise ConfigError(f"experiment={experiment} is for init.checkpoint=FILE: a run directory carries "
                              f"its own config (run={run}); drop experiment=")
        return _run_evaluated(cfg)
    return _file_evaluated(cfg, str(checkpoint), experiment)


def _run_evaluated(cfg: DictConfig) -> Evaluated:
    from mixerlab.build import build_backbone

    run_dir, ckpt = resolve_run(cfg.run)
    run_cfg = run_config(run_dir)

    def build() -> tuple[nn.Module, dict]:
        backbone = build_backbone(run_cfg)
        meta = load_weights(backbone, ckpt, cfg.get("weights", "auto"))
        meta.update(mixer=_summary(run_dir).get("mixer"), seed=run_cfg.get("seed"))
        return backbone, meta

    data_cfg = eval_data_config(run_cfg, cfg.get("data"))
    return Evaluated(run_dir, data_cfg, build, {"from": "data config"})


def _file_evaluated(cfg: DictConfig, checkpoint: str, experiment: str | None) -> Evaluated:
    from mixerlab.build import build_backbone, mixer_name
    from mixerlab.pretrained import apply_init, read_pretrained

    if experiment in UNSET:
        raise ConfigError(
            f"init.checkpoint={checkpoint} needs experiment=PRESET: the architecture to build the weights in "
            f"(conf/experiment/, e.g. experiment=deit_small)"
        )
    if not Path(checkpoint).expanduser().is_file():
        raise ConfigError(f"init.checkpoint={checkpoint!r}: no such file")
    if cfg.get("weights", "auto") != "auto":
        raise ConfigError(f"weights={cfg.weights} is for run=DIR; for a weights file's EMA: init.ema=true")
    if cfg.get("data") is None:
        raise ConfigError(f"experiment={experiment} sets no data: pass data=SET (e.g. data=imagenet_v2)")
    file = read_pretrained(Path(checkpoint).expanduser(), bool(cfg.init.get("ema")))
    settings, origin = transform_settings(cfg, experiment, file.source.name)
    with open_dict(cfg.data):  # in place: interpolations such as ${seed} keep resolving against cfg
        cfg.data.merge_with(settings)
    data_cfg = cfg.data
    out_dir = evaluation_dir(cfg, experiment, file.path)

    def build() -> tuple[nn.Module, dict]:
        model = build_backbone(cfg)
        report = apply_init({"checkpoint": file, "ema": file.ema}, model)
        meta = {"weights": report["weights"], "checkpoint": str(file.path.resolve()),
                "source": report["source"], "experiment": experiment, "mixer": mixer_name(cfg),
                "seed": cfg.get("seed"),
                "init": {k: v for k, v in report.items() if k not in ("checkpoint", "loaded")}}
        return model, meta

    record = OmegaConf.to_container(OmegaConf.create({
        "experiment": experiment, "init": {"checkpoint": str(file.path.resolve()), "ema": file.ema},
        "backbone": cfg.backbone, "mixer": cfg.mixer, "data": data_cfg, "seed": cfg.get("seed"),
    }), resolve=True)
    return Evaluated(out_dir, data_cfg, build, {"from": origin, **settings}, record)


def transform_settings(cfg: DictConfig, experiment: str, source: str) -> tuple[dict, str]:
    """The eval transform's crop_pct, interpolation, mean and std for a weights file, and where they came
    from: timm's data config of the preset's timm counterpart for a timm file (``transform=auto``), else
    the data config's own. A ``data.<key>=`` given on the command line is kept."""
    mode = cfg.get("transform") or "auto"
    if mode not in ("auto", "timm", "data"):
        raise ConfigError(f"transform={mode!r}: auto (timm's for a timm file), timm or data")
    counterpart = (cfg.get("timm_counterparts") or {}).get(experiment)
    if mode == "timm" and not counterpart:
        raise ConfigError(f"transform=timm but experiment={experiment} has no timm counterpart; presets that "
                          f"have one (timm_counterparts in conf/eval.yaml): {sorted(cfg.timm_counterparts)}")
    if mode == "data" or (mode == "auto" and not (counterpart and source.startswith("timm_"))):
        return {}, "data config"
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    timm_cfg = resolve_data_config(pretrained_cfg=get_pretrained_cfg(counterpart).to_dict())
    settings = {"crop_pct": timm_cfg["crop_pct"], "eval_interpolation": timm_cfg["interpolation"],
                "mean": list(timm_cfg["mean"]), "std": list(timm_cfg["std"])}
    given = _command_line_keys()
    return {k: v for k, v in settings.items() if f"data.{k}" not in given}, f"timm {counterpart}"


def _command_line_keys() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def evaluation_dir(cfg: DictConfig, experiment: str, checkpoint: Path) -> Path:
    """A weights file's evaluation directory: ``out=`` when it is new or holds this file's evaluation (the
    sets merge), else a new ``runs/eval/<preset>/<run id>`` (the run ids of train.py: never reused)."""
    from mixerlab.config import run_id

    out = cfg.get("out")
    if out in UNSET:
        return Path("runs") / "eval" / experiment / run_id()
    out_dir = Path(str(out)).expanduser()
    earlier = read_eval(out_dir).get("checkpoint")
    if earlier is not None and earlier != str(checkpoint.resolve()):
        raise ConfigError(f"out={out} holds the evaluation of {earlier}, not of {checkpoint.resolve()}: "
                          "choose another out= or leave it unset for a new directory")
    if (out_dir / "config.yaml").is_file() and earlier is None:
        raise ConfigError(f"out={out} is a run directory: evaluate it with run={out}, or choose another out=")
    return out_dir


# ---------------------------------------------------------------------------------------------- one command
def make_fabric(cfg: DictConfig) -> L.Fabric:
    from mixerlab.config import default_precision

    devices = int(cfg.get("devices") or 1)
    num_nodes = int(cfg.get("num_nodes") or 1)
    strategy = "ddp" if devices * num_nodes > 1 else "auto"
    fabric = L.Fabric(accelerator=cfg.get("accelerator") or "auto", devices=devices, num_nodes=num_nodes,
                      strategy=strategy, precision=default_precision(cfg.get("precision") or "auto"))
    fabric.launch()
    return fabric


def evaluate(cfg: DictConfig) -> dict:
    """Run the evaluation ``cfg`` (conf/eval.yaml) describes; returns the record eval.json now holds."""
    from hydra.utils import instantiate

    from mixerlab.training import quiet_lightning

    quiet_lightning()
    t_start = time.perf_counter()
    data_given = cfg.get("data")
    key = cfg.get("set_name") or (CLEAN if data_given is None else None)
    if key is None:
        raise ConfigError("set_name is not set: eval.py names the set after the data= choice")
    target = evaluated(cfg)
    out_dir = target.out_dir
    read_eval(out_dir)  # a damaged eval.json fails now, not after the sets are scored
    # the data is listed and checked before the model is built: a wrong folder fails at once
    data = instantiate(target.data_cfg, _convert_="all")
    fabric = make_fabric(cfg)
    keep_predictions = bool(cfg.get("predictions"))
    if keep_predictions and fabric.world_size > 1:
        raise ConfigError("predictions=true runs on one process: start eval.py without torchrun")
    model, meta = target.build()
    # the deployment form (e.g. FFNified's fused RepVGG branches): the same outputs, the cost a user pays
    model = fuse_for_inference(model, inplace=True).to(fabric.device).eval()

    sets = eval_sets(data, cfg.get("limit"))
    batch = int(cfg.get("batch_size") or getattr(data, "eval_batch_size", None) or data.batch_size)
    workers = cfg.get("num_workers")
    if workers is None:  # a data module's own loader workers (digits-C's num_workers compute its cache)
        workers = getattr(data, "loader_workers", getattr(data, "num_workers", 0))
    results = []
    for eval_set in sets:
        predictions = [] if keep_predictions else None
        r = score(fabric, model, eval_set, batch, int(workers), predictions)
        results.append((eval_set, r))
        if predictions is not None:
            name = key if len(sets) == 1 else f"{key}_{eval_set.name}"
            write_predictions(out_dir / "predictions" / f"{name}.json", eval_set.dataset, predictions)
        if fabric.is_global_zero and len(sets) > 1:
            log.info("%s %s: top-1 %.2f%% (%d images)", key, eval_set.name, r["top1"], r["images"])
    if sets[0].corruption is not None:
        earlier = read_eval(out_dir).get("sets", {}).get(CLEAN, {})
        entry = corruption_summary({(s.corruption, s.severity): r for s, r in results},
                                   earlier.get("top1"),
                                   cfg.get("normalise") or getattr(data, "normalise", "alexnet"))
    else:
        ((_, entry),) = results
        entry = {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}
    choice = cfg.get("data_choice")
    entry["data"] = str(choice if data_given is not None else _summary(out_dir).get("data") or "run's data")
    entry["transform"] = target.transform
    entry["world_size"] = fabric.world_size
    entry["wall_s"] = round(time.perf_counter() - t_start, 2)
    record = {}
    if fabric.is_global_zero:
        record = merge_eval(out_dir, key, entry, meta)
        if target.record is not None:
            atomic_write_text(out_dir / "eval_config.yaml", OmegaConf.to_yaml(target.record))
        line = (f"mCE {entry['mce']}" if "mce" in entry else
                f"mean corruption error {entry['mce_unnormalised']}%" if "mce_unnormalised" in entry else
                f"top-5 {entry['top5']}%")
        print(f"eval {key} | top-1 {entry['top1']}% | {line} | {entry['images']} images | "
              f"{entry['wall_s']} s | weights {meta['weights']} | {out_dir / EVAL_FILE}", flush=True)
    erf_cfg = cfg.get("erf") or {}
    if erf_cfg.get("layers"):
        from mixerlab.erf import write_erf

        if fabric.is_global_zero:
            write_erf(model, sets[0].dataset, list(erf_cfg.layers), out_dir / "erf",
                      images=int(erf_cfg.get("images", 64)), device=fabric.device,
                      meta={"set": key, "weights": meta["weights"], "mixer": meta.get("mixer")})
        fabric.barrier()
    return record


def write_predictions(path: Path, dataset: Dataset, predictions: list) -> None:
    """Each image's file (when the set reads files), label and top-5 classes, in dataset order."""
    rows = [{"index": i, "file": sample_file(dataset, i), "target": target, "top5": top}
            for i, target, top in predictions]
    atomic_write_text(path, json.dumps(rows) + "\n")


def sample_file(dataset: Dataset, index: int) -> str | None:
    """The image file behind ``dataset[index]``, through Subset / transform wrappers; None if unknown."""
    for _ in range(8):
        if isinstance(dataset, Subset):
            dataset, index = dataset.dataset, dataset.indices[index]
        elif hasattr(dataset, "samples"):
            return str(dataset.samples[index][0])
        elif hasattr(dataset, "source"):
            dataset = dataset.source
        else:
            return None
    return None


def eval_sets(data, limit: int | None = None) -> list[EvalSet]:
    """The data's scored sets: its own ``eval_sets()``, or any training data module's validation split;
    ``limit``: the first ``limit`` images of each (a quick look)."""
    if hasattr(data, "eval_sets"):
        sets = data.eval_sets()
    else:
        data.setup("validate")
        sets = [EvalSet("val", data.val_set)]
    if not sets:
        raise ConfigError("the data config gave no set to evaluate")
    if limit:
        for s in sets:
            s.dataset = Subset(s.dataset, range(min(int(limit), len(s.dataset))))
    return sets


def register_eval_resolvers() -> None:
    """``${eval_set_name:choice}``: the eval.json key of a ``data=`` choice (none: ``clean``)."""
    from mixerlab.config import register_resolvers

    register_resolvers()
    if not OmegaConf.has_resolver("eval_run_dir"):  # a multirun keeps Hydra's multirun.yaml in <run>/.eval
        OmegaConf.register_new_resolver("eval_run_dir", _run_dir_of, use_cache=True)
    if not OmegaConf.has_resolver("eval_set_name"):
        OmegaConf.register_new_resolver(
            "eval_set_name", lambda choice: CLEAN if choice in (None, "", "None", "null") else str(choice))


def _run_dir_of(run, out=None) -> str:
    """The run directory of ``run`` (a directory or a checkpoint in it), without checking it exists; for a
    weights file, ``out`` or runs/eval."""
    if run in UNSET:
        return "runs/eval" if out in UNSET else str(out)
    path = Path(str(run)).expanduser()
    if path.suffix == ".ckpt":
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return str(path)


def _summary(run_dir: Path) -> dict:
    return read_derived_json(run_dir / "summary.json", "run summary", SUMMARY_FIX) or {}
