"""``hydra/sweeper=until_separated``: run each configuration on a few seeds, then add seeds only where the
ranking is still open (the rule and its statistics: mixerlab/adaptive_seeds.py).

    python train.py -m mixer=identity,pooling,attention hydra/sweeper=until_separated
    python train.py -m mixer=... hydra/sweeper=until_separated hydra/launcher=local_parallel   # side by side

Hydra's basic sweeper knows all its jobs up front; this one decides each look's jobs from the results of the
last, so it is a sweeper of its own. It only calls ``launcher.launch(batch, initial_job_idx)``, so it runs
on every launcher (basic, local_parallel, SLURM). It keeps the sweep machinery of mixerlab/sweep.py: the
seed is always a varied key (job directories ``mixer=attention,seed=3``), the jobs of each look are merged
into sweep.json before they start, and a job that completed before is read from its summary.json and not
launched again, so the same command, run again, resumes where it stopped and takes the same decisions.
``until_separated.json`` in the sweep directory records every look, the rule, the alpha spent and why the
sweep stopped; it is rewritten after every look.
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class UntilSeparatedSweeper(Sweeper):
    """Seeds until every adjacent pair of the ranking is separated, or up to ``max_seeds``."""

    def __init__(self, params: dict | None = None, **settings: Any) -> None:
        from mixerlab.adaptive_seeds import SeedRule

        self.params = dict(params or {})
        self.rule = SeedRule.from_settings(settings)  # a bad setting stops here, before any job
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------------------------------ the sweep
    def configurations(self, arguments: list[str]) -> list[list[str]]:
        """Every combination of the swept keys, the seed excepted, in Hydra's basic sweeper's order."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        assert self.config is not None
        key = self.rule.seed_key
        if OmegaConf.select(self.config, key, default="__missing__") == "__missing__":
            raise ValueError(f"hydra.sweeper.seed_key={key!r}: the config has no such key to put the seed in")
        arguments = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides(arguments)
        given = [o.input_line for o in parsed if o.get_key_element().lstrip("+~") == key]
        if given:
            raise ValueError(f"{given[-1]}: hydra/sweeper=until_separated picks the seeds itself "
                             f"(hydra.sweeper.first_seed, initial_seeds, seed_step, max_seeds); drop {key} "
                             "from the command")
        batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        return [list(job) for batch in batches for job in batch]

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from mixerlab.adaptive_seeds import RECORD_NAME, judge, record
        from mixerlab.run import atomic_write_text
        from mixerlab.sweep import SweepIndex, SweepJob, SweepPlan, job_label, read_summary

        assert self.config is not None and self.launcher is not None
        rule = self.rule
        configs = self.configurations(arguments)
        plan = SweepPlan.from_config(self.config)  # the same plan the sweep callback put in sweep.json
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        index = SweepIndex(sweep_dir)
        labels = [job_label(_choices(c, plan.varied)) or "all" for c in configs]
        tried: dict[str, list[int]] = {label: [] for label in labels}
        values: dict[str, list[float]] = {label: [] for label in labels}
        walls: dict[str, list[float]] = {label: [] for label in labels}  # seconds a job of it took
        pending = {label: rule.initial() for label in labels}
        looks, returns, job_idx = [], [], 0
        classes = OmegaConf.select(self.config, "data.num_classes", default=None)
        learned_above, learned_band = rule.learned_threshold(classes), rule.learned_band(classes)
        print(f"[until_separated] {len(configs)} configuration(s); {rule.describe()}", flush=True)
        while pending:
            batch, meta = [], []
            for config, label in zip(configs, labels, strict=True):
                for seed in pending.get(label, []):
                    overrides = [*config, f"{rule.seed_key}={seed}"]
                    meta.append((label, seed, overrides))
            known = {job["job"]: job.get("num") for job in index.load().get("jobs", [])}
            free = 1 + max((n for n in known.values() if isinstance(n, int)), default=-1)
            jobs = []
            for _, _, overrides in meta:  # a job keeps its number in sweep.json; a new one gets the next
                dirname = _dirname(overrides, plan.varied)
                num = known.get(dirname)
                if not isinstance(num, int):
                    num, free = free, free + 1
                jobs.append(SweepJob(num=num, overrides=tuple(overrides),
                                     choices=_choices(overrides, plan.varied), dirname=dirname))
            index.refresh(index.plan(SweepPlan(plan.name, plan.varied, plan.overrides, tuple(jobs))))
            for (label, seed, overrides), job in zip(meta, jobs, strict=True):
                tried[label].append(seed)
                summary = read_summary(sweep_dir / job.dirname)
                if summary and summary.get("status") == "completed":  # finished before: not run again
                    print(f"[until_separated] skipped (completed before): {job.dirname}", flush=True)
                    _add(values[label], summary.get(rule.metric))
                    _add(walls[label], summary.get("wall_s"))
                else:
                    batch.append((label, overrides, job))
            batch = longest_first(batch, walls)
            if batch:
                self.validate_batch_is_legal([o for _, o, _ in batch])
                results = self.launcher.launch([o for _, o, _ in batch], initial_job_idx=job_idx)
                job_idx += len(batch)
                returns.append(results)
                for (label, _, job), result in zip(batch, results, strict=True):
                    summary = read_summary(sweep_dir / job.dirname)
                    _add(values[label], _metric(result, summary, sweep_dir / job.dirname, rule.metric))
                    _add(walls[label], (summary or {}).get("wall_s"))
            look = judge(len(looks) + 1, tried, values, rule, learned_above, learned_band)
            looks.append(look)
            atomic_write_text(sweep_dir / RECORD_NAME,
                              json.dumps(record(rule, looks, _command(plan)), indent=2) + "\n")
            print(_look_line(look, rule), flush=True)
            pending = {} if look.stop else look.next_seeds
        print(f"[until_separated] stopped: {looks[-1].stop}: {looks[-1].reason} | {sweep_dir / RECORD_NAME}",
              flush=True)
        return returns


# ---------------------------------------------------------------------------------------------- helpers
def _choices(overrides: Sequence[str], varied: Sequence[str]) -> dict[str, str]:
    from mixerlab.sweep import job_choices

    return job_choices(overrides, varied)


def _dirname(overrides: Sequence[str], varied: Sequence[str]) -> str:
    from mixerlab.sweep import job_dirname

    return job_dirname(overrides, varied)


def _command(plan: Any) -> str:
    from mixerlab.redact import redact_override

    return "python train.py -m " + " ".join(redact_override(o) for o in plan.overrides)


def longest_first(batch: list[tuple], walls: dict[str, list[float]]) -> list[tuple]:
    """A look's jobs ``(label, overrides, job)``, those of the configurations whose jobs took longest so far
    first (mean ``wall_s``; none known keeps the sweep's order). A launcher that runs jobs side by side then
    starts the long ones first and ends the look on short ones, instead of on one long job alone on one
    core (the 5 x 5 odd-one-out question: the global filter's 319 s job ran alone at the end of each
    look)."""
    def mean_wall(item: tuple) -> float:
        seconds = walls.get(item[0]) or []
        return sum(seconds) / len(seconds) if seconds else 0.0

    return sorted(batch, key=lambda item: -mean_wall(item))


def _add(values: list[float], value: Any) -> None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value:  # not NaN
        values.append(float(value))


def _metric(result: JobReturn, summary: dict | None, run_dir: Path, metric: str) -> Any:
    """The job's metric: its ``summary`` (summary.json in ``run_dir``) where the job wrote one (every
    launcher, and jobs that ran in another process), else the value the task function returned (a number, or
    a dict holding ``metric``). A failed job has no metric."""
    if summary is not None:
        return summary.get(metric) if summary.get("status") == "completed" else None
    try:
        value = result.return_value
    except Exception:  # the job raised: no value, and the sweep goes on
        log.exception("job in %s failed", run_dir)
        return None
    return value.get(metric) if isinstance(value, dict) else value


def _look_line(look: Any, rule: Any) -> str:
    from mixerlab.adaptive_seeds import pair_state

    pairs = "; ".join(f"{p['better']} vs {p['worse']}: p {p['p_value']:.3g} {pair_state(p, tie_p=True)}"
                      for p in look.pairs) or "no pairs"
    nxt = ", ".join(f"{label} +{len(seeds)}" for label, seeds in look.next_seeds.items())
    unstable = "; ".join(f"{label} {text}" for label, text in look.unstable.items())
    return (f"[until_separated] look {look.number}/{rule.max_looks} (alpha {look.alpha:.4g}, spent "
            f"{look.alpha_spent:.4g}): {pairs}" + (f" | seed-unstable: {unstable}" if unstable else "")
            + (f" | next: {nxt}" if nxt and not look.stop else ""))
