"""How a stopped run is recorded: an interruption resumes from its checkpoint, a failure starts afresh."""

from __future__ import annotations

from types import SimpleNamespace

from mixerlab.training import _stop_status


def test_a_loader_worker_killed_by_the_requeue_sigterm_is_an_interruption():
    error = RuntimeError("DataLoader worker (pid 21814) is killed by signal: Terminated. ")
    assert _stop_status(error, SimpleNamespace(received_sigterm=True)) == "interrupted"
    assert _stop_status(error, SimpleNamespace(received_sigterm=False)) == "interrupted"  # before our handler
    oom = RuntimeError("DataLoader worker (pid 21814) is killed by signal: Killed. ")
    assert _stop_status(oom, SimpleNamespace(received_sigterm=False)) == "failed"
    assert _stop_status(KeyboardInterrupt(), None) == "interrupted"
    assert _stop_status(ValueError("bad"), None) == "failed"
