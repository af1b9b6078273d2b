"""SLURM preemption and time limits: checkpoint at a step boundary, requeue, exit.

Exactly one mechanism owns requeue, depending on how the job was started:

- ``sbatch slurm/train.sbatch`` (``srun python train.py ...``): :class:`RequeueOnSignal`. SLURM sends
  SIGUSR1 ahead of the time limit (``#SBATCH --signal=SIGUSR1@90``) or on ``scancel --signal=USR1``. The
  handler only notes it; at the end of the current training batch every rank agrees to stop, writes
  ``last.ckpt`` (an ordinary, exact checkpoint), rank 0 runs ``scontrol requeue``, and the processes exit.
  The requeued job (same job id, so the same run directory) resumes from that checkpoint.
  Lightning's own ``SLURMEnvironment(auto_requeue=True)`` is switched off (``training.trainer_plugins``):
  it saves from inside the signal handler, in the middle of a step -- possibly between the optimizer step
  and the loop's bookkeeping, and on each DDP rank at a different collective -- which is neither exact nor
  safe.
- ``python train.py -m ... hydra/launcher=slurm`` (submitit): submitit asks for its own warning signal
  (SIGUSR2, ``--signal=USR2@signal_delay_s``), handles it and owns requeue (``max_num_timeout`` bounds
  requeues on time-outs; preemptions always requeue); this module stays out of its way. The requeued job
  resumes from the last periodic checkpoint and replays from there exactly.
- ``scontrol requeue`` or a node failure: no warning at all; the job restarts and resumes from the last
  periodic checkpoint (``callbacks.checkpoint.every_n_steps``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("mixerlab")


class Requeued(Exception):  # noqa: N818 -- it is an outcome, not a fault
    """Raised on every rank after the checkpoint is written and the job requeued."""


def slurm_job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def owns_requeue() -> bool:
    """Inside a SLURM job, unless submitit (which requeues on its own) started this process."""
    return bool(os.environ.get("SLURM_JOB_ID")) and not os.environ.get("SUBMITIT_EXECUTOR")


class RequeueOnSignal(Callback):
    """On ``signum`` (SIGUSR1): finish the batch, checkpoint, ``scontrol requeue``, raise :class:`Requeued`.

    The handler is installed when the callback is built -- early, since a signal that arrives before any
    handler kills the process (SIGUSR1's default action).
    """

    def __init__(self, checkpoint, signum: int = signal.SIGUSR1) -> None:
        self.checkpoint = checkpoint  # a mixerlab.checkpointing.RunCheckpoint
        self.signum = signum
        self.requested = False
        signal.signal(signum, self._note)

    def _note(self, signum, frame) -> None:
        self.requested = True
        log.warning("received %s: checkpointing at the end of this batch, then requeueing",
                    signal.Signals(signum).name)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        stop = self.requested
        if trainer.world_size > 1:  # any rank signalled -> all stop here, at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        self.checkpoint.save(trainer)
        if trainer.is_global_zero:
            job = slurm_job_id()
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode:
                log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
            else:
                log.warning("requeued SLURM job %s at step %d", job, trainer.global_step)
        raise Requeued(f"checkpointed at step {trainer.global_step} and requeued")
