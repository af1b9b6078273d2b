"""How many loader workers a run gets: ``data.num_workers: auto`` (or null) means what the machine has.

    cores   = the CPUs this process may run on (os.sched_getaffinity: a SLURM or container limit counts)
    auto    = cores - 1: one core stays with the training process, which runs the model's CPU threads
              (mixerlab/fastpath.py gives it cores - workers intra-op threads) or feeds the GPU

The folder-style pipelines (PyTorch ``DataLoader`` worker processes: folder, digits, proxy tasks) take 0..N
workers; more processes than cores only queue for the same cores, so a number above the cores is lowered to
the cores with a warning. FFCV decodes in numba threads, and numba refuses more threads than it was started
with ("The number of threads must be between 1 and N"): there an explicit number above the cores is a
ConfigError naming ``data.num_workers``, and ``auto`` is at least 1 (ffcv's own 0 would mean "every CPU of
the machine", which is more than the affinity allows on a shared node).
"""

from __future__ import annotations

import os
import warnings

from mixerlab.errors import ConfigError

AUTO = ("auto", None, "None", "null")


def available_cores() -> int:
    """CPUs this process may use: the affinity mask where the OS has one, else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _explicit(setting, key: str) -> int:
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ConfigError(f"{key}={setting!r}: use auto (what the machine has), null, or an integer >= 0")
    return setting


def loader_workers(setting: int | str | None, cores: int | None = None, key: str = "data.num_workers") -> int:
    """Worker processes for a PyTorch DataLoader: ``auto`` -> cores - 1; above the cores -> the cores."""
    cores = available_cores() if cores is None else cores
    if setting in AUTO:
        return max(0, cores - 1)
    workers = _explicit(setting, key)
    if workers > cores:
        warnings.warn(
            f"{key}={workers} but this process has {cores} CPU core(s): using {cores} workers "
            f"(more processes than cores only queue; {key}=auto picks {max(0, cores - 1)})",
            stacklevel=3,
        )
        return cores
    return workers


def decoder_threads(
    setting: int | str | None,
    cores: int | None = None,
    limit: int | None = None,
    key: str = "data.num_workers",
) -> int:
    """Decoding threads for FFCV: ``auto`` -> max(1, cores - 1); 0 or above ``min(cores, limit)`` is refused.

    ``limit``: numba's thread pool size (``numba.config.NUMBA_NUM_THREADS``), when lower than the cores.
    """
    cores = available_cores() if cores is None else cores
    cap = min(cores, limit) if limit else cores
    if setting in AUTO:
        return max(1, min(cap, cores - 1))
    threads = _explicit(setting, key)
    if not 1 <= threads <= cap:
        raise ConfigError(
            f"{key}={threads}: FFCV decodes in 1 to {cap} threads on this machine ({cores} CPU core(s) "
            f"available{f', numba started with {limit} threads' if limit and limit < cores else ''}); "
            f"set {key}=auto (uses {max(1, min(cap, cores - 1))}) or a number from 1 to {cap}"
        )
    return threads
