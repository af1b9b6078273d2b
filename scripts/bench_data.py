"""Images/s of the two ImageNet pipelines on the same generated tree, same workers, same image size.

    python scripts/bench_data.py [--workers 2 --img-size 224 --batch-size 64 --epochs 3
                                  --classes 10 --per-class 64 --min-size 300 --max-size 500 --root DIR]

Pipelines (training side, a full pass over the training split per epoch, medians over ``--epochs`` after
one warm-up epoch that also pays for worker start-up and ffcv's numba compilation):

- ``folder_deit``: folders + timm's DeiT transforms per sample in DataLoader worker processes
  (RandomResizedCrop bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25);
- ``folder_no_randaugment``: the same without RandAugment and random erasing (decode + crop floor);
- ``ffcv_loader``: ffcv decode + random-resized-crop + flip in ``--workers`` threads -> uint8 batches;
- ``ffcv_deit3``: that + the batch augmentation (3-Augment, jitter, normalise, random erasing) which on a
  GPU machine runs on the GPU; here it runs on the CPU and competes with the decoder threads.

The source tree (ImageNet-like sizes: 300-500 px JPEGs) and its betons (default writer settings:
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


def time_epochs(loader, epochs: int, name: str) -> dict:
    """Warm-up pass, then ``epochs`` timed passes; images/s per pass and their median."""
    rates = []
    for epoch in range(epochs + 1):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        start, images = time.perf_counter(), 0
        for batch, _ in loader:
            images += batch.shape[0]
        seconds = time.perf_counter() - start
        if epoch == 0:
            print(f"{name}: warm-up pass {seconds:.1f} s", flush=True)
            continue
        rates.append(images / seconds)
        print(f"{name}: pass {epoch}: {images} images in {seconds:.2f} s = {rates[-1]:.1f} img/s", flush=True)
    return {"median": round(statistics.median(rates), 1), "passes": [round(r, 1) for r in rates]}


def folder_loader(root: Path, args, randaugment: bool):
    from data.imagenet_folder import ImageNetFolderDataModule

    augment = {} if randaugment else {"auto_augment": None, "re_prob": 0.0}
    module = ImageNetFolderDataModule(root=str(root), img_size=args.img_size, num_classes=args.classes,
                                      batch_size=args.batch_size, num_workers=args.workers, pin_memory=False,
                                      persistent_workers=True, augment=augment)
    module.setup("fit")
    return module.train_dataloader()


def ffcv_loader(betons: Path, args, batch_augment: bool):
    from data.imagenet_ffcv import ImageNetFFCVDataModule

    augment = {} if batch_augment else {"three_augment": False, "re_prob": 0.0}
    module = ImageNetFFCVDataModule(root=str(betons), img_size=args.img_size, num_classes=args.classes,
                                    batch_size=args.batch_size, num_workers=args.workers, augment=augment)
    batches = module.train_dataloader()
    if not batch_augment:
        batches.transform = lambda images: images  # the loader alone: uint8 batches as ffcv hands them over
    return batches


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes per pipeline (after one warm-up)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=64)
    parser.add_argument("--min-size", type=int, default=300)
    parser.add_argument("--max-size", type=int, default=500)
    parser.add_argument("--root", type=Path, default=None, help="where to write (or reuse) tree and betons")
    parser.add_argument("--skip-ffcv", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_data_"))
    src, betons = root / "imagenet", root / "betons"
    if not (src / "fixture.json").exists():
        write_fake_imagenet(src, classes=args.classes, train_per_class=args.per_class, val_per_class=2,
                            min_size=args.min_size, max_size=args.max_size)
    result: dict = {"img_size": args.img_size, "workers": args.workers, "batch_size": args.batch_size,
                    "train_images": args.classes * args.per_class, "image_px": [args.min_size, args.max_size]}
    results = {
        "folder_deit": time_epochs(folder_loader(src, args, randaugment=True), args.epochs, "folder_deit"),
        "folder_no_randaugment": time_epochs(folder_loader(src, args, randaugment=False), args.epochs,
                                             "folder_no_randaugment"),
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
        results["ffcv_loader"] = time_epochs(ffcv_loader(betons, args, batch_augment=False), args.epochs,
                                             "ffcv_loader")
        results["ffcv_deit3"] = time_epochs(ffcv_loader(betons, args, batch_augment=True), args.epochs,
                                            "ffcv_deit3")
        result["speedup_ffcv_loader_vs_folder_deit"] = round(
            results["ffcv_loader"]["median"] / results["folder_deit"]["median"], 2)
        result["speedup_ffcv_deit3_vs_folder_deit"] = round(
            results["ffcv_deit3"]["median"] / results["folder_deit"]["median"], 2)
        result["ffcv"] = getattr(ffcv, "__version__", "?")
    import PIL
    import timm

    result.update({f"{k}_img_s": v["median"] for k, v in results.items()})
    result["passes_img_s"] = {k: v["passes"] for k, v in results.items()}
    result.update(torch=torch.__version__, timm=timm.__version__, pillow=PIL.__version__,
                  python=platform.python_version(), cpus=os.cpu_count(), machine=platform.machine(),
                  date=time.strftime("%Y-%m-%d"), root=str(root))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
