"""Images/s of the two ImageNet pipelines on the same generated tree, same workers, same image size.

    python scripts/bench_data.py [--workers 2 --img-size 224 --batch-size 64 --epochs 5
                                  --classes 10 --per-class 64 --min-size 300 --max-size 500 --root DIR]

Pipelines (training side, a full pass over the training split per epoch; one warm-up pass each, which
also pays for worker start-up and ffcv's numba compilation, then ``--epochs`` rounds in which every
pipeline makes one timed pass in turn; medians over the rounds):

- ``folder_deit``: folders + timm's DeiT transforms per sample in DataLoader worker processes
  (RandomResizedCrop bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25);
- ``folder_no_randaugment``: the same without RandAugment and random erasing (decode + crop floor);
- ``ffcv_loader``: ffcv decode + random-resized-crop + flip in ``--workers`` threads -> uint8 batches;
- ``ffcv_deit3``: that + the batch augmentation (3-Augment, jitter, normalise, random erasing) which on a
  GPU machine runs on the GPU; here it runs on the CPU and competes with the decoder threads.

The source tree (ImageNet-like: 300-500 px JPEGs of ~100 KB) and its betons (default writer settings:
512 px max, half JPEG q90, half raw) are written to ``--root`` (a temporary folder by default). The last
line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.fake_imagenet import write_fake_imagenet  # noqa: E402


def one_pass(loader, epoch: int) -> tuple[int, float]:
    """Images and seconds for one full pass over ``loader`` as epoch ``epoch``."""
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    start, images = time.perf_counter(), 0
    for batch, _ in loader:
        images += batch.shape[0]
    return images, time.perf_counter() - start


def time_interleaved(loaders: dict, epochs: int) -> dict:
    """One warm-up pass each, then ``epochs`` rounds of one timed pass per pipeline, in turn.

    Interleaving keeps a change in the shared machine's load from landing on one pipeline only.
    """
    for name, loader in loaders.items():
        print(f"{name}: warm-up pass {one_pass(loader, 0)[1]:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for epoch in range(1, epochs + 1):
        for name, loader in loaders.items():
            images, seconds = one_pass(loader, epoch)
            rates[name].append(images / seconds)
            print(
                f"{name}: pass {epoch}: {images} images in {seconds:.2f} s = {rates[name][-1]:.1f} img/s",
                flush=True,
            )
    return {
        name: {"median": round(statistics.median(r), 1), "passes": [round(x, 1) for x in r]}
        for name, r in rates.items()
    }


def folder_loader(root: Path, args, randaugment: bool):
    from data.imagenet_folder import ImageNetFolderDataModule

    augment = {} if randaugment else {"auto_augment": None, "re_prob": 0.0}
    module = ImageNetFolderDataModule(
        root=str(root),
        img_size=args.img_size,
        num_classes=args.classes,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=False,
        persistent_workers=True,
        augment=augment,
    )
    module.setup("fit")
    return module.train_dataloader()


def ffcv_loader(betons: Path, args, batch_augment: bool):
    from data.imagenet_ffcv import ImageNetFFCVDataModule

    augment = {} if batch_augment else {"three_augment": False, "re_prob": 0.0}
    module = ImageNetFFCVDataModule(
        root=str(betons),
        img_size=args.img_size,
        num_classes=args.classes,
        batch_size=args.batch_size,
        num_workers=args.workers,
        augment=augment,
    )
    batches = module.train_dataloader()
    if not batch_augment:
        batches.transform = lambda images: images  # the loader alone: uint8 batches as ffcv hands them over
    return batches


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5, help="timed passes per pipeline (after one warm-up)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--min-size", type=int, default=300)
    parser.add_argument("--max-size", type=int, default=500)
    parser.add_argument("--noise", type=float, default=28.0, help="28: ImageNet-like ~110 KB JPEGs at 400 px")
    parser.add_argument("--root", type=Path, default=None, help="where to write (or reuse) tree and betons")
    parser.add_argument("--skip-ffcv", action="store_true", help="folder pipeline only (no ffcv installed)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_data_"))
    src, betons = root / "imagenet", root / "betons"
    if not (src / "fixture.json").exists():
        write_fake_imagenet(
            src,
            classes=args.classes,
            train_per_class=args.per_class,
            val_per_class=2,
            min_size=args.min_size,
            max_size=args.max_size,
            noise=args.noise,
        )
    result: dict = {
        "img_size": args.img_size,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "train_images": args.classes * args.per_class,
        "image_px": [args.min_size, args.max_size],
        "noise": args.noise,
    }
    loaders = {
        "folder_deit": folder_loader(src, args, randaugment=True),
        "folder_no_randaugment": folder_loader(src, args, randaugment=False),
    }
    if not args.skip_ffcv:
        import ffcv

        from data.ffcv_writer import write_betons

        if not (betons / "dataset.json").exists():
            start = time.perf_counter()
            write_betons(src, betons, num_workers=args.workers)
            result["beton_write_s"] = round(time.perf_counter() - start, 1)
        result["beton_mb"] = round((betons / "train.beton").stat().st_size / 2**20, 1)
        result["source_mb"] = round(sum(p.stat().st_size for p in (src / "train").rglob("*")) / 2**20, 1)
        result["ffcv"] = getattr(ffcv, "__version__", "?")
        loaders["ffcv_loader"] = ffcv_loader(betons, args, batch_augment=False)
        loaders["ffcv_deit3"] = ffcv_loader(betons, args, batch_augment=True)
    results = time_interleaved(loaders, args.epochs)
    if not args.skip_ffcv:
        for name in ("ffcv_loader", "ffcv_deit3"):
            result[f"speedup_{name}_vs_folder_deit"] = round(
                results[name]["median"] / results["folder_deit"]["median"], 2
            )
    import PIL
    import timm

    result.update({f"{k}_img_s": v["median"] for k, v in results.items()})
    result["passes_img_s"] = {k: v["passes"] for k, v in results.items()}
    result.update(
        torch=torch.__version__,
        timm=timm.__version__,
        pillow=PIL.__version__,
        python=platform.python_version(),
        cpus=os.cpu_count(),
        machine=platform.machine(),
        date=time.strftime("%Y-%m-%d"),
        root=str(root),
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
