"""Evaluate without training: ``python eval.py run=DIR [data=SET] [erf.layers=[0,3]]`` (-m: several), or
a weights file with no run: ``python eval.py experiment=PRESET init.checkpoint=FILE data=SET``.

run directory (config.yaml, checkpoints/last.ckpt) -> model with EMA weights if kept -> data= set(s)
-> <run>/eval.json (merged with earlier sets) and <run>/erf/*.png (mixerlab/evaluation.py);
a weights file -> the preset's model through mixerlab/pretrained.py -> runs/eval/<preset>/<id>/eval.json
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mixerlab.errors import ConfigError, DiskFullError
from mixerlab.evaluation import register_eval_resolvers

register_eval_resolvers()


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from mixerlab.evaluation import evaluate

    try:
        record = evaluate(cfg)
    except (ConfigError, DiskFullError) as error:  # a wrong config, a damaged file, a full disk: one line
        raise SystemExit(f"{type(error).__name__}: {error}") from None
    return (record.get("sets", {}).get(cfg.set_name) or {}).get("top1")


if __name__ == "__main__":
    main()
