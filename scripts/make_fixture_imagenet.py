"""Write a small ImageNet-layout tree of real JPEGs (deterministic for a seed).

    python scripts/make_fixture_imagenet.py --out runs/fixture [--classes 4 --train-per-class 6
        --val-per-class 2 --seed 0 --min-size 40 --max-size 96 --noise 4 --bad-files]

``--bad-files`` adds a PNG named .JPEG, CMYK and grayscale JPEGs (decodable), and a truncated JPEG, a
zero-byte file, .DS_Store and notes.txt (not). ``OUT/fixture.json`` lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.fake_imagenet import write_fake_imagenet  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=6)
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=40, help="smallest image side, pixels")
    parser.add_argument("--max-size", type=int, default=96, help="largest image side, pixels")
    parser.add_argument(
        "--noise",
        type=float,
        default=4.0,
        help="pixel noise std: 4 = small files; ~28 = ImageNet-like JPEG sizes (~110 KB at 400 px)",
    )
    parser.add_argument("--bad-files", action="store_true", help="add the bad-input cases")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} exists and is not empty: pick a new folder")
    manifest = write_fake_imagenet(
        args.out,
        classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        min_size=args.min_size,
        max_size=args.max_size,
        bad_files=args.bad_files,
        noise=args.noise,
    )
    summary = {
        "out": str(args.out),
        "classes": len(manifest["classes"]),
        "train": manifest["train"],
        "val": manifest["val"],
        "odd": len(manifest["odd"]),
        "bad": len(manifest["bad"]),
    }
    print(json.dumps(summary))
    return manifest


if __name__ == "__main__":
    main()
