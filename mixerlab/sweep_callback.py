"""The sweep's Hydra callback: plans the sweep (mixerlab/sweep.py), keeps ``sweep.json`` current, and writes
the report (mixerlab/report/) when the multirun ends.

It lives apart from both so that neither imports the other: the report reads sweeps, the sweep knows
nothing of the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mixerlab.report import SweepReport
from mixerlab.run import checkpoint_files
from mixerlab.sweep import INDEX_NAME, SweepIndex, SweepPlan, set_aside_failed_attempt

log = logging.getLogger("mixerlab.sweep")


class SweepCallback(Callback):
    """Hydra callback (conf/train.yaml ``hydra.callbacks``): plans the sweep, keeps ``sweep.json`` current,
    and writes the report when the multirun ends."""

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and goes on; a sweep that cannot be planned
        # (or would reuse directories of other jobs) must not start, so this stops the process instead.
        try:
            self._start(config)
        except Exception as error:
            log.exception("cannot start the sweep")
            raise SystemExit(f"cannot start the sweep: {error}") from error

    def _start(self, config: DictConfig) -> None:
        plan = SweepPlan.from_config(config)
        plan.publish()  # before anything resolves hydra.sweep.dir, which names the sweep with it
        self.sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).resolve()
        index = SweepIndex(self.sweep_dir)
        planned = {job.dirname for job in plan.jobs}
        for job in index.refresh(index.plan(plan))["jobs"]:
            if job["status"] == "failed" and job["job"] in planned:  # not jobs of other commands
                attempt = set_aside_failed_attempt(self.sweep_dir / job["run_dir"])
                print(f"job {job['job']} failed before ({job.get('error')}): its files are set aside in "
                      f"{attempt}; running it again", flush=True)
        ours = [job for job in index.refresh()["jobs"] if job["job"] in planned]
        done = sum(job["status"] == "completed" for job in ours)
        resume = sum(bool(checkpoint_files(self.sweep_dir / job["run_dir"]))
                     for job in ours if job["status"] in ("incomplete", "interrupted"))
        print(f"sweep {plan.name}: {len(plan.jobs)} jobs, {done} completed before (skipped), "
              f"{resume} resuming from a checkpoint, in {self.sweep_dir}", flush=True)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._update_index(config, running=Path(config.hydra.runtime.output_dir).name)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self._update_index(config)

    @staticmethod
    def _update_index(config: DictConfig, running: str | None = None) -> None:
        """Jobs' statuses as their directories show them; ``running``: the job starting now (a killed
        sweep leaves it so in sweep.json; the next run and the report re-read it from its directory).
        Hydra calls the job hooks in single runs too, which belong to no sweep: nothing is written then."""
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).resolve()
        index = SweepIndex(sweep_dir)
        try:
            state = index.scan()
            for job in state["jobs"]:
                if job["job"] == running and job["status"] != "completed":
                    job["status"] = "running"
            index.write(state)
        except OSError as error:  # the index is derived data: never fail a job over it
            log.warning("could not update %s: %s", index.path, error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is None:
            return
        index = SweepIndex(self.sweep_dir).refresh()
        counts = ", ".join(f"{n} {s}" for s, n in index["counts"].items() if n)
        print(f"sweep {index.get('name')}: {counts} | index: {self.sweep_dir / INDEX_NAME}", flush=True)
        if not self.report:
            return
        try:
            # an adaptive sweep's alpha and tie margin come from its until_separated.json, which the sweeper
            # has written by now
            report = SweepReport([self.sweep_dir])
            html, _ = report.write(self.sweep_dir)
            print(f"report: {html} | statistics: {report.json_path}", flush=True)
        except Exception:  # a report bug must not hide the sweep's results: scripts/report.py can redo it
            log.exception("could not write the sweep report; run scripts/report.py %s", self.sweep_dir)
