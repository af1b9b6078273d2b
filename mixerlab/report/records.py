"""What the report reads from disk: one record per job, runs grouped by configuration, per-epoch curves.

    sweep dirs (sweep.json + run dirs: summary.json, metrics.csv, config.yaml)
        -> RunRecord per job (each job once: keyed by its run directory)
        -> ConfigGroup per configuration (runs that differ only in their seed), on the task its config names
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from omegaconf import OmegaConf

from mixerlab.config import flatten
from mixerlab.sweep import SEED_KEY, SweepIndex, job_label, read_summary

log = logging.getLogger("mixerlab.report")

# top-level config keys that say where a run logs and which sweep it is in, not what it computes
BOOKKEEPING_KEYS = ("logger", "sweep")
# the config keys that say what a run is trained on: pairs are compared only within one task
TASK_KEYS = ("data._target_", "data.task", "data.num_classes")


@dataclass(frozen=True)
class Task:
    """What a configuration trains on, and the accuracy of guessing (100 / classes; None when unknown)."""

    key: tuple
    label: str
    chance: float | None


@dataclass
class RunRecord:
    sweep: str
    job: str
    choices: dict[str, str]
    status: str
    run_dir: Path
    summary: dict = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    previous_errors: list[str] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides (sweep.json)

    @property
    def mixer(self) -> str:
        return str(self.summary.get("mixer") or self.choices.get("mixer") or "?")

    @property
    def config_label(self) -> str:
        """What the run varies apart from its seed; the mixer when it varies nothing else."""
        return job_label(self.choices) or self.mixer

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.choices.items()) or self.job

    @property
    def config_path(self) -> Path | None:
        for candidate in (self.run_dir / "config.yaml", self.run_dir / ".hydra" / "config.yaml"):
            if candidate.is_file():
                return candidate
        return None

    @cached_property
    def config(self) -> dict | None:
        """What the run computes, apart from its seed and its bookkeeping: its resolved config without every
        key named ``seed`` that holds the run's seed, without ``logger`` and ``sweep`` (where it logs, which
        sweep it belongs to: a wandb group names the sweep) and with its own directory blanked from paths,
        so that the seeds of one configuration pool across sweeps (one sweep per seed). None without a
        readable config."""
        path = self.config_path
        try:
            config = OmegaConf.to_container(OmegaConf.load(path)) if path else None
        except Exception as error:  # noqa: BLE001 - an unreadable config: the run is grouped by its sweep
            log.warning("%s is damaged (%s): the run is grouped by its sweep alone", path,
                        type(error).__name__)
            return None
        if not isinstance(config, dict):
            return None
        seed, run_dir = config.get(SEED_KEY), str(self.run_dir)

        def strip(node):
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if not (k == SEED_KEY and v == seed)}
            if isinstance(node, list):
                return [strip(v) for v in node]
            return node.replace(run_dir, "<run>") if isinstance(node, str) else node

        return strip({k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS})

    @cached_property
    def eval_sets(self) -> dict:
        """The sets ``eval.py`` scored, from the run's eval.json, read once per report: several sections
        use it, and a damaged file is said once."""
        from mixerlab.report.robustness import read_eval

        return read_eval(self.run_dir)

    @cached_property
    def erf_record(self) -> dict | None:
        """The run's erf/erf.json with its map files (mixerlab.report.robustness.read_erf), read once."""
        from mixerlab.report.robustness import read_erf

        return read_erf(self.run_dir)

    @cached_property
    def config_key(self) -> str | None:
        """``config`` as one comparable string: runs with equal keys are seeds of one configuration."""
        return None if self.config is None else json.dumps(self.config, sort_keys=True, default=str)

    @cached_property
    def flat_config(self) -> dict[str, object]:
        return flatten(self.config or {})

    @cached_property
    def task(self) -> Task:
        """``data._target_``, ``data.task`` and ``data.num_classes`` of the config (the summary's ``data``
        choice without one): chance is 100 / classes."""
        flat = self.flat_config
        target, name, classes = (flat.get(key) for key in TASK_KEYS)
        classes = classes if classes is not None else self.summary.get("num_classes")
        if target is None and name is None and classes is None:
            data = self.summary.get("data")
            return Task(("choice", data), str(data or "one task"), None)
        label = str(name or str(target or "data").rsplit(".", 1)[-1].removesuffix("DataModule"))
        chance = 100.0 / classes if isinstance(classes, int | float) and classes > 0 else None
        if isinstance(classes, int | float):
            label += f" ({int(classes)} classes)"
        return Task((target, name, classes), label, chance)

    def value(self, key: str) -> float | None:
        value = self.summary.get(key)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


@dataclass
class ConfigGroup:
    """Runs of one configuration that differ only in their seed. ``ignored``: config keys that do not tell
    configurations apart (:func:`added_keys`)."""

    sweep: str
    label: str
    runs: list[RunRecord]
    ignored: frozenset[str] = frozenset()

    @cached_property
    def flat_config(self) -> dict[str, object]:
        """The first run's flattened config without the ignored keys (read by every pair it is in)."""
        return {k: v for k, v in self.runs[0].flat_config.items() if k not in self.ignored}

    def stat(self, key: str) -> tuple[float | None, float | None]:
        values = [v for r in self.runs if (v := r.value(key)) is not None]
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

    @property
    def mixer(self) -> str:
        return self.runs[0].mixer

    @property
    def task(self) -> Task:
        return self.runs[0].task

    def values(self, key: str = "top1") -> list[float]:
        """One value per seed (runs without it left out)."""
        return [v for r in self.runs if (v := r.value(key)) is not None]


def read_curves(metrics_csv: Path) -> list[dict]:
    """Per-epoch rows of metrics.csv; an epoch logged twice (a resumed run) keeps its last row."""
    try:
        with metrics_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    by_epoch: dict[int, dict] = {}
    for row in rows:
        try:
            epoch = int(float(row.get("epoch") or ""))
        except ValueError:
            continue
        values = {}
        for key, text in row.items():
            try:
                values[key] = float(text)
            except (TypeError, ValueError):
                pass
        by_epoch[epoch] = {**by_epoch.get(epoch, {}), **values}
    return [by_epoch[e] for e in sorted(by_epoch)]


def collect_runs(sweep_dirs: list[Path]) -> list[RunRecord]:
    """One record per job across the sweep directories: the index names the jobs; each job's own files
    give its status and numbers (the same run directory listed twice appears once)."""
    records: dict[Path, RunRecord] = {}
    for sweep_dir in sweep_dirs:
        sweep_dir = Path(sweep_dir).resolve()
        if (sweep_dir / "summary.json").is_file():  # a single run directory
            summary = read_summary(sweep_dir) or {}
            jobs = [{"job": sweep_dir.name, "run_dir": ".", "choices": {}, "status": summary.get("status")}]
            name = sweep_dir.parent.name
        else:
            index = SweepIndex(sweep_dir).scan()
            jobs, name = index["jobs"], index.get("name") or sweep_dir.name
        for job in jobs:
            run_dir = (sweep_dir / job["run_dir"]).resolve()
            summary = read_summary(run_dir) or {}
            records[run_dir] = RunRecord(
                sweep=name, job=job["job"], choices=dict(job.get("choices") or {}),
                status=str(job.get("status") or summary.get("status") or "pending"), run_dir=run_dir,
                summary=summary, error=job.get("error") or summary.get("error"),
                attempts=int(job.get("attempts") or 1),
                previous_errors=list(job.get("previous_errors") or []),
                curves=read_curves(run_dir / "metrics.csv"), overrides=list(job.get("overrides") or []))
    return list(records.values())


def _overridden(run: RunRecord, key: str) -> bool:
    """Whether one of the run's overrides sets ``key`` or a key under it (``key=``, ``+key=``, ``~key``)."""
    for override in run.overrides:
        name = override.lstrip("+~").split("=", 1)[0]
        if name == key or key.startswith(name + "."):
            return True
    return False


def added_keys(runs: list[RunRecord]) -> dict[str, str]:
    """Config keys a newer mixerlab added, which must not split the seeds of one configuration: a key
    missing from the configs of some runs and holding one value in all the others, where the runs without it
    were written by other commits (``summary.json``'s ``git_commit``) than those with it and no run's
    overrides name it. A sweep resumed after an update (seeds 0-1 before ``callbacks.checkpoint.
    keep_previous`` existed, seeds 2-4 after) otherwise reads as two configurations. ``{key: why}``."""
    flats = [(run, run.flat_config) for run in runs if run.status == "completed" and run.config]
    out: dict[str, str] = {}
    for key in sorted({k for _, flat in flats for k in flat}):
        having = [(run, flat[key]) for run, flat in flats if key in flat]
        lacking = [run for run, flat in flats if key not in flat]
        if not having or not lacking:
            continue
        values = {json.dumps(value, sort_keys=True, default=str) for _, value in having}
        with_commits = {run.summary.get("git_commit") for run, _ in having}
        without_commits = {run.summary.get("git_commit") for run in lacking}
        if (len(values) != 1 or None in with_commits | without_commits or with_commits & without_commits
                or any(_overridden(run, key) for run, _ in flats)):
            continue
        commits = ", ".join(sorted(str(c)[:7] for c in without_commits))
        out[key] = (f"missing from the configs of {len(lacking)} run(s) written at {commits}, "
                    f"{having[0][1]} in the other {len(having)}: a key added since")
    return out


def group_by_config(runs: list[RunRecord], added: dict[str, str] | None = None) -> list[ConfigGroup]:
    """Completed runs of one configuration (``RunRecord.config_key`` less the ``added`` keys, by default
    :func:`added_keys` of ``runs``; without a config, of one sweep and label) that differ only in their seed,
    best mean top-1 first. Runs of several sweeps pool when their seeds differ; where a seed ran twice, each
    job keeps its own group (by sweep and label), so a rerun never counts as another seed."""
    ignored = frozenset(added_keys(runs) if added is None else added)
    configs: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        if run.status == "completed":
            if not run.config_key:
                key: tuple = ("sweep", run.sweep, run.config_label)
            elif ignored:
                kept = {k: v for k, v in run.flat_config.items() if k not in ignored}
                key = ("config", json.dumps(kept, sort_keys=True, default=str))
            else:
                key = ("config", run.config_key)
            configs.setdefault(key, []).append(run)
    out = []
    for members in configs.values():
        seeds = [run.summary.get(SEED_KEY) for run in members]
        if len(set(seeds)) < len(seeds):
            by_job: dict[tuple[str, str], list[RunRecord]] = {}
            for run in members:
                by_job.setdefault((run.sweep, run.config_label), []).append(run)
            out += [ConfigGroup(sweep, label, part, ignored) for (sweep, label), part in by_job.items()]
        else:
            sweeps = " + ".join(dict.fromkeys(run.sweep for run in members))
            out.append(ConfigGroup(sweeps, members[0].config_label, members, ignored))
    return sorted(out, key=lambda g: -(g.stat("top1")[0] or -1.0))


