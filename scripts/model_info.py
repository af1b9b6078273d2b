"""Print a model's size and cost as JSON, without data or training: the tool for fidelity checks.

The model is built on the meta device: shapes only, no weights allocated, so even a 200M-parameter
preset is counted in about a second.

    python scripts/model_info.py experiment=deit_small
    python scripts/model_info.py backbone=vit_tiny mixer=spectral data.img_size=224
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.core.hydra_config import HydraConfig  # noqa: E402

from mixerlab.build import build_backbone, compose_config, mixer_name  # noqa: E402
from mixerlab.costs import count_flops, count_parameters  # noqa: E402
from mixerlab.errors import ConfigError  # noqa: E402
from mixerlab.schema import validate  # noqa: E402


def model_info(overrides: list[str]) -> dict:
    cfg = compose_config(overrides)
    validate(cfg)
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
        "flop_counter": "torch.utils.flop_counter (multiply-add = 2)",
    }
    if flops["analytic"]:
        info["flops_counted"] = flops["counted"]
        info["flops_analytic"] = flops["analytic"]
        info["flops_note"] = (
            "torch.utils.flop_counter has no FFT formulas; FFT FLOPs of "
            + ", ".join(flops["analytic_from"])
            + " are counted analytically (2.5 n log2 n per real-input transform of n points; see the"
            " mixers' module docstrings)"
        )
    return info


if __name__ == "__main__":
    try:
        print(json.dumps(model_info(sys.argv[1:])))
    except ConfigError as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from None
