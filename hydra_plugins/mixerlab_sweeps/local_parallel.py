"""``hydra/launcher=local_parallel``: a sweep's jobs side by side on one machine, each on its share of cores.

    python train.py -m mixer=attention,pooling seed=0,1 hydra/launcher=local_parallel        # 2 jobs x 1 core
    python train.py -m ... hydra/launcher=local_parallel hydra.launcher.jobs=8               # 16 cores: 8 x 2

It is hydra-submitit-launcher's local launcher (kept: its pickling of the job, one process per job, logs and
results under ``.submitit/``, the same ``__call__`` that runs a job on SLURM) with its ``launch`` loop
written anew, because the stock one cannot run a sweep on a laptop:

- submitit's ``LocalExecutor`` starts every job of a ``map_array`` at once: it has no ``array_parallelism``,
  so 25 jobs on 2 cores would be 25 processes fighting for them. Here at most ``jobs`` run at a time.
- the stock launcher returns ``[j.results()[0] for j in jobs]``, which raises at the first job whose process
  died (a ``kill -9``, the out-of-memory killer) and so loses every result after it. Here a dead job is
  recorded failed in its own ``summary.json``, with the reason, and the others run on.
- each job's process learns its share of the cores (``MIXERLAB_CORES_PER_JOB``, read by
  ``fastpath.cpu_threads: auto``) without a config change, so its config, its directory name and its
  weights are those of the same job run alone with that many threads.
- a job that completed before is skipped here (as ``mixerlab.sweep.run_job`` would skip it) without the
  seconds a new process costs to start;
- a line per job start and finish, with counts and an ETA: the jobs' own output goes to their log files.

hydra-joblib-launcher was the other kept option; a loky worker that dies takes the whole ``Parallel`` down
with ``TerminatedWorkerError``, which is the failure this launcher exists to contain.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# The folder that holds hydra_plugins/, mixerlab/ and train.py: the jobs' processes import from it even when
# the sweep was started from another directory.
REPO = Path(__file__).resolve().parents[2]
# mixerlab.fastpath.CORES_ENV, not imported: Hydra imports this module at every start (plugin discovery)
CORES_ENV = "MIXERLAB_CORES_PER_JOB"
POLL_S = 0.5


def cores_per_job(jobs: int, threads_per_job: int | str, cores: int | None = None) -> int:
    """``auto``: the cores this process may use, split evenly between the jobs that run at once."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"hydra.launcher.jobs={jobs!r}: how many jobs run at once, an integer >= 1")
    if threads_per_job == "auto":
        if cores is None:
            try:
                cores = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cores = os.cpu_count() or 1
        return max(1, cores // jobs)
    if isinstance(threads_per_job, bool) or not isinstance(threads_per_job, int) or threads_per_job < 1:
        raise ValueError(f"hydra.launcher.threads_per_job={threads_per_job!r}: an integer >= 1 or auto")
    return threads_per_job


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LocalParallelLauncher(LocalLauncher):
    """At most ``jobs`` jobs at once, each a process with ``threads_per_job`` cores; a dead job is recorded
    failed and the sweep goes on."""

    def __init__(self, jobs: int = 2, threads_per_job: int | str = "auto", **params: Any) -> None:
        self.jobs = jobs
        self.cores = cores_per_job(jobs, threads_per_job)  # bad values fail here, before any job starts
        super().__init__(**params)

    def _executor(self) -> Any:
        """submitit's local executor, set up as the stock launcher sets it up, plus the job's environment."""
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(cluster="local", folder=params.pop("submitit_folder"),
                                         local_max_num_timeout=params.pop("max_num_timeout", 0))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        setup = list(params.pop("setup", None) or [])
        path = os.environ.get("PYTHONPATH")
        setup += [f"export {CORES_ENV}={self.cores}",
                  "export PYTHONPATH=" + shlex.quote(f"{REPO}{os.pathsep}{path}" if path else str(REPO))]
        executor.update_parameters(
            local_setup=setup, **{k if k in base else f"local_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = self._executor()
        total = len(job_overrides)
        print(f"[local_parallel] {total} jobs, {min(self.jobs, total)} at a time, {self.cores} core(s) each; "
              f"job logs: {self.params['submitit_folder'].replace('%j', '<job>')}", flush=True)
        waiting = list(enumerate(job_overrides))
        running: dict[int, tuple[Any, float]] = {}
        results: dict[int, JobReturn] = {}
        durations: list[float] = []
        try:
            while waiting or running:
                while waiting and len(running) < self.jobs:
                    i, overrides = waiting.pop(0)
                    idx = initial_job_idx + i
                    done_before = self._completed_before(overrides, sweep_dir)
                    if done_before is not None:  # as run_job would, without starting a process for it
                        results[i] = done_before
                        print(f"[local_parallel] skip   #{idx} {self._name(overrides)}: completed before | "
                              f"{len(results)}/{total} done", flush=True)
                        continue
                    job = executor.submit(self, list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                          Singleton.get_state())
                    running[i] = (job, time.monotonic())
                    print(f"[local_parallel] start  #{idx} {self._name(overrides)} | {len(running)} running, "
                          f"{len(results)}/{total} done", flush=True)
                finished = [i for i, (job, _) in running.items() if job.done()]
                for i in finished:
                    job, started = running.pop(i)
                    durations.append(time.monotonic() - started)
                    results[i] = self._collect(job, job_overrides[i], sweep_dir)
                    remaining = len(waiting) + len(running)
                    eta = math.ceil(remaining / self.jobs) * sum(durations) / len(durations)
                    outcome = self._outcome(results[i], job_overrides[i], sweep_dir)
                    print(f"[local_parallel] finish #{initial_job_idx + i} {self._name(job_overrides[i])} in "
                          f"{_duration(durations[-1])}: {outcome}"
                          f" | {len(results)}/{total} done, {len(running)} running, {len(waiting)} waiting"
                          + (f" | ETA {_duration(eta)}" if remaining else ""), flush=True)
                if not finished:
                    time.sleep(POLL_S)
        except BaseException:  # Ctrl-C or a launcher bug: leave no job running behind the sweep
            for job, _ in running.values():
                job.cancel(check=False)
            raise
        return [results[i] for i in range(total)]

    @staticmethod
    def _name(overrides: Sequence[str]) -> str:
        from mixerlab.sweep import sweep_job_resolver

        return sweep_job_resolver(list(overrides)) or " ".join(filter_overrides(overrides))

    def _run_dir(self, overrides: Sequence[str], sweep_dir: Path) -> Path:
        return sweep_dir / self._name(overrides)

    def _completed_before(self, overrides: Sequence[str], sweep_dir: Path) -> JobReturn | None:
        from mixerlab.sweep import read_summary

        run_dir = self._run_dir(overrides, sweep_dir)
        summary = read_summary(run_dir)
        if not summary or summary.get("status") != "completed":
            return None
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                         _return_value=summary.get("top1"), working_dir=str(run_dir))

    def _outcome(self, result: JobReturn, overrides: Sequence[str], sweep_dir: Path) -> str:
        from mixerlab.sweep import read_summary

        summary = read_summary(self._run_dir(overrides, sweep_dir)) or {}
        status = summary.get("status", "no summary")
        if status == "failed":
            return f"FAILED ({summary.get('error')})"
        top1 = summary.get("top1", result._return_value if result.status == JobStatus.COMPLETED else None)
        return f"{status}, top1 {top1}" if top1 is not None else str(status)

    def _collect(self, job: Any, overrides: Sequence[str], sweep_dir: Path) -> JobReturn:
        """The job's JobReturn; for a job whose process died, a failed summary.json with the reason and a
        completed JobReturn whose value is None, as train.py returns for a job that raised (Hydra's sweepers
        read every return value and would stop the sweep, and its report, at a failed one)."""
        try:
            return job.results()[0]
        except Exception as error:  # the process died before submitit could write its result
            from mixerlab.run import RunDirectory
            from mixerlab.sweep import read_summary

            run_dir = self._run_dir(overrides, sweep_dir)
            code = job._process.poll() if getattr(job, "_process", None) is not None else None
            tail = [line for line in str(error).splitlines() if line.strip()][-1:] or [type(error).__name__]
            reason = (f"JobProcessDied: the job's process ended without a result (submitit state "
                      f"{job.state}, exit code {code}); log: {job.paths.stderr}; {tail[0].strip()}")
            summary = read_summary(run_dir)
            if not summary or summary.get("status") not in ("completed", "failed", "interrupted"):
                RunDirectory(run_dir).write_summary(
                    {"status": "failed", "error": reason, "run_dir": str(run_dir)})
            log.error("job %s: %s", run_dir.name, reason)
            return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None,
                             working_dir=str(run_dir))
