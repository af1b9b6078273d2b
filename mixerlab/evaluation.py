"""Evaluate a finished (or running) run on any data config, without training: ``python eval.py run=DIR``.

    <run>/config.yaml + checkpoints/last.ckpt  ->  backbone with the EMA weights when the run kept them,
        in its deployment form (mixers.contract.fuse_for_inference: FFNified's RepVGG branches fused)
        -> every EvalSet of the chosen data (data/shifted.py, data/digits_c.py; any training data module:
           its validation split) -> top-1 / top-5 counted once per image across every process
        -> <run>/eval.json (merged with the sets earlier evaluations wrote) and, with erf.layers, <run>/erf/

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
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics import Metric

from data.corruptions import ALEXNET_ERROR
from data.shifted import EvalSet
from mixerlab.errors import ConfigError
from mixerlab.run import atomic_write_text
from mixers.contract import fuse_for_inference

log = logging.getLogger("mixerlab")
EVAL_FILE = "eval.json"
MODEL_INPUT_KEYS = ("img_size", "in_chans", "num_classes", "mean", "std")
CLEAN = "clean"  # the eval.json key of the run's own validation data


# ---------------------------------------------------------------------------------------------- the run
def resolve_run(run: str | None) -> tuple[Path, Path]:
    """A run directory, or a checkpoint inside ``<run>/checkpoints/`` -> (run directory, checkpoint)."""
    if run in (None, "", "None", "null"):
        raise ConfigError("run is not set: pass run=runs/<experiment>/<run id> (a run directory) or a .ckpt")
    path = Path(run).expanduser().resolve()
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        ckpt = path
    else:
        run_dir, ckpt = path, path / "checkpoints" / "last.ckpt"
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run={run}: {run_dir} has no config.yaml (not a mixerlab run directory)")
    if not ckpt.is_file():
        raise ConfigError(f"run={run}: no checkpoint at {ckpt} (has the run trained an epoch yet?)")
    return run_dir, ckpt


def run_config(run_dir: Path) -> DictConfig:
    return OmegaConf.load(run_dir / "config.yaml")


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
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    has_ema = any(k.startswith("ema.module.") for k in state)
    if weights == "ema" and not has_ema:
        raise ConfigError(f"weights=ema but {ckpt} holds no EMA weights (recipe.ema_decay was unset)")
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    prefix = "ema.module." if use == "ema" else "backbone."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
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
def score(fabric: L.Fabric, model: nn.Module, eval_set: EvalSet, batch_size: int, num_workers: int) -> dict:
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
    with open(run_dir / ".eval.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_eval(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return {}


def merge_eval(run_dir: Path, key: str, entry: dict, meta: dict) -> dict:
    """Add or replace set ``key`` in ``<run>/eval.json``, keeping every other set; atomic."""
    with locked(run_dir):
        record = read_eval(run_dir)
        record.update({k: v for k, v in meta.items()})
        record.setdefault("sets", {})[key] = entry
        atomic_write_text(Path(run_dir) / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    return record


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

    from mixerlab.build import build_backbone
    from mixerlab.training import quiet_lightning

    quiet_lightning()
    t_start = time.perf_counter()
    run_dir, ckpt = resolve_run(cfg.run)
    run_cfg = run_config(run_dir)
    data_cfg = cfg.get("data")
    key = cfg.get("set_name") or (CLEAN if data_cfg is None else None)
    if key is None:
        raise ConfigError("set_name is not set: eval.py names the set after the data= choice")
    # the data is listed and checked before the model is built: a wrong folder fails at once
    data = instantiate(eval_data_config(run_cfg, data_cfg), _convert_="all")
    fabric = make_fabric(cfg)
    backbone = build_backbone(run_cfg)
    meta = load_weights(backbone, ckpt, cfg.get("weights", "auto"))
    # the deployment form (e.g. FFNified's fused RepVGG branches): the same outputs, the cost a user pays
    model = fuse_for_inference(backbone, inplace=True).to(fabric.device)

    sets = eval_sets(data, cfg.get("limit"))
    batch = int(cfg.get("batch_size") or getattr(data, "eval_batch_size", None) or data.batch_size)
    workers = cfg.get("num_workers")
    if workers is None:  # a data module's own loader workers (digits-C's num_workers compute its cache)
        workers = getattr(data, "loader_workers", getattr(data, "num_workers", 0))
    results = []
    for eval_set in sets:
        r = score(fabric, model, eval_set, batch, int(workers))
        results.append((eval_set, r))
        if fabric.is_global_zero and len(sets) > 1:
            log.info("%s %s: top-1 %.2f%% (%d images)", key, eval_set.name, r["top1"], r["images"])
    if sets[0].corruption is not None:
        earlier = read_eval(run_dir).get("sets", {}).get(CLEAN, {})
        entry = corruption_summary({(s.corruption, s.severity): r for s, r in results},
                                   earlier.get("top1"),
                                   cfg.get("normalise") or getattr(data, "normalise", "alexnet"))
    else:
        ((_, entry),) = results
        entry = {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}
    choice = cfg.get("data_choice")
    entry["data"] = str(choice if data_cfg is not None else _summary(run_dir).get("data") or "run's data")
    entry["world_size"] = fabric.world_size
    entry["wall_s"] = round(time.perf_counter() - t_start, 2)
    meta.update(mixer=_summary(run_dir).get("mixer"), seed=run_cfg.get("seed"))
    record = {}
    if fabric.is_global_zero:
        record = merge_eval(run_dir, key, entry, meta)
        line = (f"mCE {entry['mce']}" if "mce" in entry else
                f"mean corruption error {entry['mce_unnormalised']}%" if "mce_unnormalised" in entry else
                f"top-5 {entry['top5']}%")
        print(f"eval {key} | top-1 {entry['top1']}% | {line} | {entry['images']} images | "
              f"{entry['wall_s']} s | weights {meta['weights']} | {run_dir / EVAL_FILE}", flush=True)
    erf_cfg = cfg.get("erf") or {}
    if erf_cfg.get("layers"):
        from mixerlab.erf import write_erf

        if fabric.is_global_zero:
            write_erf(model, sets[0].dataset, list(erf_cfg.layers), run_dir / "erf",
                      images=int(erf_cfg.get("images", 64)), device=fabric.device,
                      meta={"set": key, "weights": meta["weights"], "mixer": meta.get("mixer")})
        fabric.barrier()
    return record


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


def _run_dir_of(run) -> str:
    """The run directory of ``run`` (a directory or a checkpoint in it), without checking it exists."""
    if run in (None, "", "None", "null"):
        return "."
    path = Path(str(run)).expanduser()
    if path.suffix == ".ckpt":
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return str(path)


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
