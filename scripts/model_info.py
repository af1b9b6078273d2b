"""Print a model's size and cost as JSON, without data or training: the tool for fidelity checks.

FLOPs are counted on the meta device (shapes only, no weights allocated), so even a 200M-parameter preset
is counted in about a second. The training step's peak tensor memory (mixerlab.costs.step_memory: one
forward, backward and AdamW step on zeros, parameters, gradients, optimizer state and activations) needs
real tensors: it is measured on the CPU at ``--memory-batch`` images (default 8; 0 skips it).

    python scripts/model_info.py experiment=deit_small
    python scripts/model_info.py backbone=vit_tiny mixer=spectral data.img_size=224 --memory-batch 32
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.core.hydra_config import HydraConfig  # noqa: E402

from mixerlab.build import build_backbone, compose_config, mixer_name  # noqa: E402
from mixerlab.costs import count_flops, count_parameters, step_memory  # noqa: E402

DEFAULT_MEMORY_BATCH = 8


def model_info(overrides: list[str], memory_batch: int = 0) -> dict:
    """Size and forward FLOPs per image; with ``memory_batch`` > 0 also the step memory at that batch."""
    cfg = compose_config(overrides)
    with torch.device("meta"):
        model = build_backbone(cfg)
    flops = count_flops(model, cfg.data.img_size, cfg.data.in_chans)
    info = {
        "params": count_parameters(model),
        "flops": flops["flops"],
        "gmacs": round(flops["flops"] / 2e9, 4),
        "tokens": model.layout.num_tokens,
        "mixer": mixer_name(cfg),
        "backbone": HydraConfig.get().runtime.choices.get("backbone"),
        "img_size": cfg.data.img_size,
        "num_classes": cfg.data.num_classes,
        "flop_counter": "torch.utils.flop_counter + mixerlab.costs formulas (multiply-add = 2)",
    }
    if flops["by_formula"]:
        info["flops_by_formula"] = flops["by_formula"]
        info["flops_note"] = flops["note"]
    if memory_batch > 0:
        torch.manual_seed(0)
        real = build_backbone(cfg)
        d = cfg.data
        images = torch.zeros(memory_batch, d.in_chans, d.img_size, d.img_size)
        targets = torch.zeros(memory_batch, dtype=torch.long)
        info.update(step_memory(real, images, targets, torch.nn.functional.cross_entropy,
                                lambda m: torch.optim.AdamW(m.parameters())))
    return info


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory-batch", type=int, default=DEFAULT_MEMORY_BATCH,
                        help="batch of the measured training step (0: skip the memory figure)")
    args, overrides = parser.parse_known_args(argv)
    print(json.dumps(model_info(overrides, memory_batch=args.memory_batch)))


if __name__ == "__main__":
    main(sys.argv[1:])
