"""A training step's peak tensor memory against the token count, per mixer (BENCHMARKS.md "Memory vs tokens").

    python scripts/bench_memory.py                                  # attention, spectral, pooling; 32..128 px
    python scripts/bench_memory.py --mixers attention,xca --img-sizes 32,64 --batch 16 --sdpa math

Each point is the whole model of the default digits config (``backbone=vit_micro``: patch 4, width 64, 4
layers, 2 heads, GAP head) at ``data.img_size`` = S, so N = (S / 4)² tokens, measured by
``mixerlab.costs.step_memory`` (one forward, backward and AdamW step of a copy, at ``--batch`` images; on the
CPU the peak of the live tensor storages, so the figure does not depend on the machine's load). ``--sdpa``
pins the attention kernel: ``math`` keeps the N x N probabilities for backward (quadratic), the CPU's fused
``flash`` kernel keeps only their log-sum-exp. Prints a Markdown table (MB, and the ratio to the first
mixer's smallest point) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixerlab.build import build_backbone, compose_config  # noqa: E402
from mixerlab.costs import step_memory  # noqa: E402

BACKENDS = {"default": None, "math": "MATH", "flash": "FLASH_ATTENTION"}


def sdpa(backend: str) -> contextlib.AbstractContextManager:
    if BACKENDS[backend] is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, BACKENDS[backend])])


def measure(mixer: str, img_size: int, batch: int, backend: str) -> dict:
    torch.manual_seed(0)
    cfg = compose_config([f"mixer={mixer}", f"data.img_size={img_size}"])
    model = build_backbone(cfg)
    images = torch.zeros(batch, cfg.data.in_chans, img_size, img_size)
    labels = torch.zeros(batch, dtype=torch.long)
    with sdpa(backend):
        result = step_memory(model, images, labels, F.cross_entropy,
                             lambda m: torch.optim.AdamW(m.parameters()))
    return {"mixer": mixer, "img_size": img_size, "tokens": model.layout.num_tokens, **result}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", default="attention,spectral,pooling")
    parser.add_argument("--img-sizes", default="32,64,96,128")
    parser.add_argument("--batch", type=int, default=64, help="the digits config's batch")
    parser.add_argument("--sdpa", choices=sorted(BACKENDS), default="default")
    args = parser.parse_args(argv)
    mixers = args.mixers.split(",")
    sizes = [int(s) for s in args.img_sizes.split(",")]
    points = [measure(m, s, args.batch, args.sdpa) for m in mixers for s in sizes]
    by = {(p["mixer"], p["img_size"]): p for p in points}
    print("| mixer | " + " | ".join(f"{s} px ({by[(mixers[0], s)]['tokens']} tok)" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for m in mixers:
        print(f"| {m} | " + " | ".join(f"{by[(m, s)]['step_memory_mb']:.1f}" for s in sizes) + " |")
    report = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.processor()}",
        "torch": torch.__version__, "batch": args.batch, "sdpa": args.sdpa,
        "method": points[0]["step_memory_method"],
        "points": [{k: v for k, v in p.items() if k != "step_memory_method"} for p in points],
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
