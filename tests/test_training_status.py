"""How a stopped run is recorded: an interruption resumes from its checkpoint, a failure starts afresh. One
rule (mixerlab.run.stop_status) serves the run as it stops and the sweep as it reads an older summary."""

from __future__ import annotations

import json

import pytest

from mixerlab.preemption import Requeued
from mixerlab.run import stop_status
from mixerlab.sweep import job_status


def message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"  # as training.py records it in summary.json


def test_a_loader_worker_killed_by_the_requeue_sigterm_is_an_interruption():
    error = message(RuntimeError("DataLoader worker (pid 21814) is killed by signal: Terminated. "))
    assert stop_status(error, received_sigterm=True) == "interrupted"
    assert stop_status(error) == "interrupted"  # before our own SIGTERM handler has run
    oom = message(RuntimeError("DataLoader worker (pid 21814) is killed by signal: Killed. "))
    assert stop_status(oom) == "failed"
    assert stop_status(message(ValueError("bad"))) == "failed"
    assert stop_status(message(ValueError("bad")), received_sigterm=True) == "interrupted"


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(-1), Requeued("requeued at step 5")])
def test_stops_from_outside_are_interruptions(error):
    assert stop_status(message(error)) == "interrupted"


def test_the_sweep_reads_an_older_failed_summary_by_the_same_rule(tmp_path):
    def status_of(error: str) -> str:
        (tmp_path / "summary.json").write_text(json.dumps({"status": "failed", "error": error}))
        return job_status(tmp_path)[0]

    worker = "RuntimeError: DataLoader worker (pid 7) is killed by signal: Terminated."
    assert status_of(worker) == "interrupted"
    assert status_of("KeyboardInterrupt: ") == "interrupted"
    assert status_of("RuntimeError: CUDA out of memory") == "failed"
