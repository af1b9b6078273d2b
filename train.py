"""Train one model: ``python train.py [group=option ...] [key=value ...]`` (``-m`` for a sweep).

config (conf/) -> backbone + mixer -> recipe -> Lightning Trainer -> run directory (summary.json)
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mixerlab.config import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from mixerlab.sweep import run_job

    summary = run_job(train, cfg)  # in a sweep: skip what completed, record a failure and go on
    return summary.get("top1")


def train(cfg: DictConfig) -> dict:
    from mixerlab.training import train as train_run  # imported here: a failing import fails the job alone

    return train_run(cfg)


if __name__ == "__main__":
    main()
