"""Write FFCV betons (train.beton, val.beton) from an ImageNet-layout folder tree.

    python scripts/write_ffcv.py --src /datasets/imagenet --out /datasets/imagenet_ffcv \
        [--max-resolution 512 --compress-probability 0.5 --jpeg-quality 90 --workers N]

Bad source files are verified up front, left out, and listed in OUT/bad_files.txt; OUT/dataset.json
records the class names (sorted wnids = labels), counts and settings. Then:
    python train.py data=imagenet_ffcv data.root=OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.ffcv_writer import write_betons  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder with train/<wnid>/* and val/<wnid>/*")
    parser.add_argument("--out", required=True, help="folder for train.beton, val.beton, dataset.json")
    parser.add_argument(
        "--max-resolution",
        type=int,
        default=512,
        help="longer side is resized down to this (0: keep); ffcv-imagenet: 500 (RN-50)",
    )
    parser.add_argument(
        "--compress-probability",
        type=float,
        default=0.5,
        help="fraction stored as JPEG, the rest as raw pixels (bigger file, faster loading)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--workers", type=int, default=None, help="writer processes (default: all cores)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--seed", type=int, default=0, help="which images are stored as JPEG")
    parser.add_argument("--verify-cache", default=None, help="reuse verification verdicts from this folder")
    args = parser.parse_args(argv)
    record = write_betons(
        args.src,
        args.out,
        max_resolution=args.max_resolution or None,
        compress_probability=args.compress_probability,
        jpeg_quality=args.jpeg_quality,
        num_workers=args.workers,
        splits=args.splits,
        seed=args.seed,
        verify_cache=args.verify_cache,
    )
    summary = {
        "out": args.out,
        "classes": len(record["classes"]),
        **{f"{k}_samples": v["samples"] for k, v in record["splits"].items()},
        "bad_files": sum(v["bad_files"] for v in record["splits"].values()),
    }
    print(json.dumps(summary))
    return record


if __name__ == "__main__":
    main()
