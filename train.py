"""Train one model: ``python train.py [group=option ...] [key=value ...]`` (``-m`` for a sweep).

config (conf/) -> validation (mixerlab/schema.py) -> backbone + mixer -> recipe -> Lightning Trainer
-> run directory (summary.json)
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mixerlab.config import register_resolvers
from mixerlab.errors import ConfigError, DiskFullError

register_resolvers()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from mixerlab.sweep import run_job

    try:
        summary = run_job(train, cfg)  # in a sweep: skip what completed, record a failure and go on
    except (ConfigError, DiskFullError) as error:  # a wrong config, a damaged file, a full disk: its message
        raise SystemExit(f"{type(error).__name__}: {error}") from None  # alone, no traceback; exit code 1
    return summary.get("top1")


def train(cfg: DictConfig) -> dict:
    from mixerlab.schema import validate

    validate(cfg)  # before torch, Lightning and the model are imported: a bad value fails in about a second
    from mixerlab.training import train as train_run  # imported here: a failing import fails the job alone

    return train_run(cfg, validated=True)


if __name__ == "__main__":
    main()
