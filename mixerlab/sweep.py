"""Sweeps: one Hydra multirun = one sweep directory that can be finished after a crash.

    python train.py -m mixer=attention,pooling seed=0,1 trainer.max_epochs=5

    runs/sweeps/<sweep name>/                 name: sweep.name, or derived from the command's overrides
        sweep.json                            the index: varied keys, every job's overrides, status, run dir
        report.html, report.md                written at the end of the multirun (mixerlab/report.py)
        mixer=attention,seed=0/               one run directory per job, named by its varied choices
            summary.json, metrics.csv, config.yaml, checkpoints/last.ckpt
            failed-attempts/1/                a failed attempt's files, set aside before the re-run

Re-running the same command lands in the same directories, because both names are functions of the
overrides alone (never a timestamp): completed jobs are skipped, interrupted ones resume from
``checkpoints/last.ckpt`` (training.py), failed ones are set aside and run again. A job that raises is
recorded as failed and the sweep goes on (Hydra's basic launcher would otherwise stop at the first error).

The sweep's name and varied keys are known only to the process that parsed the command (Hydra composes each
job's config afresh from its own overrides). ``SweepCallback`` (mixerlab/sweep_callback.py) computes them
in ``on_multirun_start`` and publishes them through an environment variable, which the resolvers below
read when a job's directory and logger group are resolved: in this process (basic launcher) and in the
workers that inherit the environment (submitit, joblib).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from mixerlab.redact import redact_override
from mixerlab.run import SUMMARY_FIX, RunDirectory, atomic_write_text, stop_status
from mixerlab.storage import read_derived_json

log = logging.getLogger("mixerlab.sweep")

ENV_VAR = "MIXERLAB_SWEEP"
INDEX_NAME = "sweep.json"
ATTEMPTS_DIR = "failed-attempts"
SEED_KEY = "seed"
# Keys that only steer the sweep machinery: they change neither a job nor the sweep's identity.
_SWEEP_KEYS = re.compile(r"^[+~]*sweep\.")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]")


# ---------------------------------------------------------------------------------------------- naming
def _key(override: str) -> str:
    """``+callbacks.x.y=3`` -> ``callbacks.x.y``: the key a job varies, without Hydra's add/delete prefix."""
    return override.split("=", 1)[0].lstrip("+~")


def _value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _safe_name(text: str, limit: int = 120) -> str:
    """A directory name: unsafe characters replaced, and a hash added whenever that (or truncation) could
    make two different inputs collide."""
    safe = _UNSAFE.sub("_", text)
    if safe != text or len(safe) > limit:
        safe = f"{safe[: limit - 9]}-{_short_hash(text)}"
    return safe


def job_choices(overrides: Iterable[str], varied: Sequence[str]) -> dict[str, str]:
    """The job's value for each varied key, in the sweep's key order."""
    by_key = {_key(o): _value(o) for o in overrides}
    return {key: by_key[key] for key in varied if key in by_key}


def job_dirname(overrides: Iterable[str], varied: Sequence[str]) -> str:
    """``mixer=attention,seed=1``: the job's varied choices (Hydra's override_dirname, restricted to them)."""
    choices = job_choices(overrides, varied)
    if not choices:
        return "job"
    return _safe_name(",".join(f"{k}={v}" for k, v in choices.items()))


def job_label(choices: dict[str, str], drop: Sequence[str] = (SEED_KEY,)) -> str:
    """What a job varies apart from its seed: the wandb ``job_type``, the report's configuration label."""
    return ",".join(f"{k}={v}" for k, v in choices.items() if k not in drop)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class SweepJob:
    num: int
    overrides: tuple[str, ...]
    choices: dict[str, str]
    dirname: str


@dataclass(frozen=True)
class SweepPlan:
    """What one multirun command asks for: its name, the keys it varies and its jobs, in Hydra's order."""

    name: str
    varied: tuple[str, ...]
    overrides: tuple[str, ...]
    jobs: tuple[SweepJob, ...]

    @classmethod
    def from_overrides(cls, arguments: Sequence[str], name: str | None = None,
                       always_varied: Sequence[str] = ()) -> SweepPlan:
        """Expand overrides exactly as Hydra's basic sweeper does (``BasicSweeper.split_arguments``), so
        the job list and each job's override strings match the jobs Hydra will launch. ``always_varied``:
        keys that name job directories even with one value (the seed, which an adaptive sweeper adds)."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        parsed = OverridesParser.create().parse_overrides(list(arguments))
        varied: dict[str, None] = {}
        for override in parsed:  # a later override of the same key replaces an earlier one, as in Hydra
            key = override.get_key_element().lstrip("+~")
            varied.pop(key, None)
            if (override.is_sweep_override() or key in always_varied) and not _SWEEP_KEYS.match(key):
                varied[key] = None
        keys = tuple(sorted(varied))  # not the command's order: `seed=0,1 mixer=a,b` names jobs the same
        try:
            batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
            expanded = [job for batch in batches for job in batch]
        except Exception:  # a sweeper with continuous ranges (optuna, ...): jobs are discovered as they run
            expanded = []
        jobs = tuple(
            SweepJob(num=i, overrides=tuple(o), choices=job_choices(o, keys), dirname=job_dirname(o, keys))
            for i, o in enumerate(expanded)
        )
        if not name:
            # Order-free and blind to sweep.* keys: `mixer=a,b seed=0` and `seed=0 mixer=b,a` are one sweep.
            identity = sorted(sorted(o for o in job.overrides if not _SWEEP_KEYS.match(o)) for job in jobs)
            head = "+".join(keys) or "sweep"
            presets = [o.value() for o in parsed if o.get_key_element().lstrip("+~") == "experiment"
                       and not o.is_sweep_override() and o.value()]
            head = f"{presets[-1]}.{head}" if presets else head  # e.g. deit_small.mixer-1a2b3c4d
            name = f"{head}-{_short_hash(json.dumps(identity or sorted(arguments)))}"
        return cls(name=_safe_name(name), varied=keys, overrides=tuple(arguments), jobs=jobs)

    @classmethod
    def from_config(cls, config: DictConfig) -> SweepPlan:
        """From the multirun's own config: sweeper params (e.g. set by an experiment preset), then the
        command line's overrides, in the order Hydra's basic sweeper reads them."""
        params = OmegaConf.select(config, "hydra.sweeper.params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()]
        arguments += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        always_varied: tuple[str, ...] = ()
        sweeper = OmegaConf.select(config, "hydra.sweeper")
        if sweeper is not None and "initial_seeds" in sweeper:
            # hydra/sweeper=until_separated picks the seeds: its first look's jobs are planned here, the
            # later looks' jobs are merged into sweep.json as the sweeper launches them.
            from mixerlab.adaptive_seeds import SeedRule

            settings = OmegaConf.to_container(sweeper, resolve=True)
            rule = SeedRule.from_settings(settings)
            if OmegaConf.select(config, rule.seed_key, default="__missing__") == "__missing__":
                raise ValueError(f"hydra.sweeper.seed_key={rule.seed_key!r}: the config has no such key "
                                 "to put the seed in")
            given = [a for a in arguments if _key(a) == rule.seed_key]
            if given:
                raise ValueError(f"{given[-1]}: hydra/sweeper=until_separated picks the seeds itself "
                                 f"(hydra.sweeper.first_seed, initial_seeds, seed_step, max_seeds); drop "
                                 f"{rule.seed_key} from the command")
            arguments.append(f"{rule.seed_key}={','.join(str(s) for s in rule.initial())}")
            always_varied = (rule.seed_key,)
        return cls.from_overrides(arguments, OmegaConf.select(config, "sweep.name"), always_varied)

    def publish(self) -> None:
        os.environ[ENV_VAR] = json.dumps({"name": self.name, "varied": list(self.varied)})


def active_sweep() -> dict | None:
    """The sweep this process (or its parent) is running, if any; None in a single run."""
    if HydraConfig.initialized() and HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    try:
        return json.loads(os.environ[ENV_VAR])
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- resolvers
def _as_list(overrides: Any) -> list[str]:
    if isinstance(overrides, ListConfig):
        return [str(o) for o in OmegaConf.to_container(overrides)]
    return [str(o) for o in overrides or []]


def sweep_name_resolver(default: str | None = None) -> str | None:
    sweep = active_sweep()
    return sweep["name"] if sweep else default


def sweep_job_resolver(overrides: Any) -> str:
    """The job's directory: its varied choices; without the sweep callback's plan, all its overrides
    (longer, but still one directory per job and the same one on a re-run)."""
    overrides = _as_list(overrides)
    sweep = active_sweep()
    return job_dirname(overrides, sweep["varied"] if sweep else sorted({_key(o) for o in overrides}))


def sweep_run_resolver(overrides: Any, fallback: Any = None) -> str | None:
    """The job's directory name in a sweep; ``fallback`` (or None) in a single run."""
    sweep = active_sweep()
    if sweep:
        return job_dirname(_as_list(overrides), sweep["varied"])
    return None if fallback is None else str(fallback)


def sweep_choice_resolver(overrides: Any, fallback: Any = None) -> str | None:
    sweep = active_sweep()
    if not sweep:
        return None if fallback is None else str(fallback)
    return job_label(job_choices(_as_list(overrides), sweep["varied"])) or (
        None if fallback is None else str(fallback))


def register_sweep_resolvers() -> None:
    for name, fn in (("sweep_name", sweep_name_resolver), ("sweep_job", sweep_job_resolver),
                     ("sweep_run", sweep_run_resolver),
                     ("sweep_choice", sweep_choice_resolver)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# ---------------------------------------------------------------------------------------------- job status
def read_summary(run_dir: Path) -> dict | None:
    """A job's summary; ``None`` if it has none, or a damaged one (said in one warning line): the job then
    counts as incomplete and re-running the sweep resumes it from its checkpoint and rewrites the summary."""
    return read_derived_json(Path(run_dir) / "summary.json", "run summary", SUMMARY_FIX)


def job_status(run_dir: Path) -> tuple[str, dict | None]:
    """pending (never started) | incomplete (running, or killed: resumes) | interrupted (resumes) |
    failed (re-run from scratch) | completed (skipped)."""
    summary = read_summary(run_dir)
    if summary is None:
        started = run_dir.is_dir() and any(
            p.name not in (".hydra", ATTEMPTS_DIR) and p.suffix != ".log" for p in run_dir.iterdir())
        return ("incomplete" if started else "pending"), None
    status = summary.get("status")
    if status == "failed" and stop_status(str(summary.get("error", ""))) == "interrupted":  # older summaries
        return "interrupted", summary
    return str(status or "incomplete"), summary


def set_aside_failed_attempt(run_dir: Path) -> Path:
    """Move a failed attempt's files to ``failed-attempts/<n>/`` so the job starts afresh; nothing is deleted.

    Hydra's own ``.hydra/`` and the job log are copied rather than moved: the log may be open (a job that
    sets itself aside writes its own log on)."""
    attempts = run_dir / ATTEMPTS_DIR
    n = 1 + sum(1 for p in attempts.iterdir() if p.is_dir()) if attempts.is_dir() else 1
    target = attempts / str(n)
    target.mkdir(parents=True)
    for entry in sorted(run_dir.iterdir()):
        if entry.name == ATTEMPTS_DIR:
            continue
        if entry.name == ".hydra" or entry.suffix == ".log":
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)
        else:
            shutil.move(str(entry), str(target / entry.name))
    return target


def failed_attempts(run_dir: Path) -> list[dict]:
    attempts = run_dir / ATTEMPTS_DIR
    if not attempts.is_dir():
        return []
    out = []
    for path in sorted((p for p in attempts.iterdir() if p.is_dir()), key=lambda p: int(p.name)
                       if p.name.isdigit() else 0):
        summary = read_summary(path) or {}
        out.append({"attempt": path.name, "error": summary.get("error")})
    return out


# ---------------------------------------------------------------------------------------------- the index
class SweepIndex:
    """``sweep.json``: a record derived from the job directories, rewritten whole (atomically) on every
    change, so a killed sweep or a concurrent writer never leaves it half-written or stale for long."""

    def __init__(self, sweep_dir: str | Path) -> None:
        self.dir = Path(sweep_dir).resolve()
        self.path = self.dir / INDEX_NAME

    def load(self) -> dict:
        """The index as written; a damaged one (said in one warning line) is rebuilt from the job directories,
        which hold everything it records."""
        index = read_derived_json(self.path, "sweep index",
                                  "rebuilding it from the job directories (nothing is lost)")
        if index is None or not isinstance(index.get("jobs", []), list):
            return {"jobs": []}
        return index

    def plan(self, plan: SweepPlan) -> dict:
        """Merge a command's jobs into the index. Raises if a job directory already holds the same job
        name with other overrides (possible only with an explicit sweep.name): it would be skipped as done."""
        index = self.load()
        jobs = {job["job"]: job for job in index.get("jobs", [])}
        clashes = []
        for job in plan.jobs:
            old = jobs.get(job.dirname)
            ours = sorted(o for o in job.overrides if not _SWEEP_KEYS.match(o))
            if old and old.get("overrides") is not None:
                theirs = sorted(o for o in old["overrides"] if not _SWEEP_KEYS.match(o))
                if theirs != ours:
                    clashes.append(f"  {job.dirname}: was {theirs}, now {ours}")
                    continue
            jobs[job.dirname] = {**(old or {}), "job": job.dirname, "num": job.num,
                                 "overrides": [redact_override(o) for o in job.overrides],
                                 "choices": job.choices, "run_dir": job.dirname}
        if clashes:
            raise ValueError(
                f"sweep directory {self.dir} already holds jobs of the same name with other settings:\n"
                + "\n".join(clashes)
                + "\nGive this sweep another name (sweep.name=...) or directory (hydra.sweep.dir=...); "
                "nothing was changed.")
        return {
            "name": plan.name,
            "dir": str(self.dir),
            "command": "python train.py -m " + " ".join(redact_override(o) for o in plan.overrides),
            "varied": list(dict.fromkeys([*index.get("varied", []), *plan.varied])),
            "jobs": list(jobs.values()),
        }

    def refresh(self, index: dict | None = None) -> dict:
        """:meth:`scan`, then write ``sweep.json``."""
        index = self.scan(index)
        self.write(index)
        return index

    def scan(self, index: dict | None = None) -> dict:
        """Re-read every job's status from its run directory; add jobs found on disk but not yet indexed
        (a directory of plain runs works too: its varied keys are the overrides that differ between runs)."""
        index = index or self.load()
        jobs = {job["job"]: job for job in index.get("jobs", [])}
        found = {}
        if self.dir.is_dir():
            for path in sorted(self.dir.iterdir()):
                overrides_file = path / ".hydra" / "overrides.yaml"
                if path.name not in jobs and overrides_file.is_file():
                    try:
                        found[path.name] = [str(o) for o in OmegaConf.load(overrides_file)]
                    except Exception as error:  # noqa: BLE001 - yaml's errors share no base with OmegaConf's
                        log.warning("%s is damaged (%s): %s is left out of the sweep index; it is Hydra's "
                                    "record of the job's overrides, rewritten when the job runs again",
                                    overrides_file, type(error).__name__, path.name)
        if "varied" not in index:
            seen: dict[str, set[str]] = {}
            for overrides in found.values():
                for o in overrides:
                    seen.setdefault(_key(o), set()).add(_value(o))
            index["varied"] = sorted(k for k, values in seen.items() if len(values) > 1)
            index.setdefault("name", self.dir.name)
        varied = index["varied"]
        for name, overrides in found.items():
            jobs[name] = {"job": name, "overrides": [redact_override(o) for o in overrides],
                          "choices": job_choices(overrides, varied), "run_dir": name}
        for job in jobs.values():
            run_dir = self.dir / job["run_dir"]
            status, summary = job_status(run_dir)
            previous = failed_attempts(run_dir)
            job.update(status=status, attempts=len(previous) + (status != "pending"),
                       error=(summary or {}).get("error") if status in ("failed", "interrupted") else None,
                       previous_errors=[p["error"] for p in previous])
        index["jobs"] = sorted(jobs.values(), key=lambda j: (j.get("num", 1 << 30), j["job"]))
        index["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        index["counts"] = {s: sum(j["status"] == s for j in index["jobs"])
                           for s in ("completed", "failed", "interrupted", "incomplete", "pending")}
        return index

    def write(self, index: dict) -> None:
        atomic_write_text(self.path, json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- a job
def reset_peak_memory() -> None:
    """Jobs of a multirun share one process: without a reset, each job would report the peak of all before."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: resets the peak RSS that getrusage reports (proc(5), clear_refs "5")
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_job(train: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run one job of a sweep, or a single run as is.

    In a multirun: skip a job whose summary says completed, set aside a failed attempt, and turn an
    exception into a failed summary instead of stopping the sweep (Ctrl-C still stops it)."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        return train(cfg)
    run = RunDirectory(HydraConfig.get().runtime.output_dir)
    status, summary = job_status(run.path)
    if status == "completed":
        print(f"skipped (completed before): {run.path.name} | top1 {summary.get('top1')}% | run: {run.path}",
              flush=True)
        return summary
    if status == "failed":  # the sweep callback sets failed attempts aside; this covers launchers without it
        set_aside_failed_attempt(run.path)
    reset_peak_memory()
    try:
        return train(cfg)
    except Exception as error:
        summary = run.read_summary()
        if summary and summary.get("status") == "interrupted":
            # Stopped from outside (a requeue's SIGTERM, often first seen as a loader worker's death).
            # Leave as SystemExit: Hydra turns an Exception into the job's return value, which submitit
            # would pickle as the result before the requeued job has run: the sweep would count it failed.
            raise SystemExit(f"interrupted: {type(error).__name__}: {error} | run: {run.path}") from error
        log.exception("job %s failed; the sweep goes on", run.path.name)
        if not summary or summary.get("status") != "failed":  # failed before training.py wrote a summary
            summary = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                       "run_dir": str(run.path)}
            run.write_summary(summary)
            print(f"FAILED {run.path.name} | {summary['error']} | run: {run.path}", flush=True)
        return summary
    finally:
        from mixerlab.loggers import finish_stray_wandb_run

        finish_stray_wandb_run()  # a run left open would swallow the next job's metrics
