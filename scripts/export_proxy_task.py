"""Write a proxy task (``data=digit_tasks`` or ``data=pathfinder``) as an ImageNet-style folder of PNGs.

    python scripts/export_proxy_task.py OUT [--train-epochs N] [--overwrite] [config overrides ...]
    python scripts/export_proxy_task.py /data/odd_one_out experiment=proxy_odd_one_out
    python scripts/export_proxy_task.py /data/pathfinder data=pathfinder

The digit tasks draw fresh training samples each epoch; the export holds ``--train-epochs`` epochs of them
exactly as ``train.py`` draws them for the config's ``seed``. The folder is what the folder and FFCV
pipelines read (``scripts/write_ffcv.py --src OUT``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from data.folder_export import write_image_folder  # noqa: E402
from mixerlab.build import build_datamodule, compose_config  # noqa: E402


def export(out: str, overrides: list[str], train_epochs: int = 1, overwrite: bool = False) -> Path:
    cfg = compose_config(overrides)
    datamodule = build_datamodule(cfg)
    if not hasattr(datamodule, "split_arrays"):
        choice = HydraConfig.get().runtime.choices.get("data")
        raise SystemExit(
            f"data={choice} has no generated splits to export; use data=digit_tasks or data=pathfinder"
        )
    splits = {"train": datamodule.split_arrays("train", train_epochs), "val": datamodule.split_arrays("val")}
    info = {
        "overrides": overrides,
        "train_epochs": train_epochs,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
    }
    return write_image_folder(out, splits, datamodule.class_names, info=info, overwrite=overwrite)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="directory to create (train/, val/, export.json)")
    parser.add_argument(
        "--train-epochs", type=int, default=1, help="epochs of fresh training samples to write"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args, overrides = parser.parse_known_args(argv)
    root = export(args.out, overrides, args.train_epochs, args.overwrite)
    print(f"wrote {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
