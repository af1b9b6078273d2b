"""OmegaConf resolvers the configs use, and config checks that run before anything expensive."""

from __future__ import annotations

import os
import secrets
import time

from omegaconf import OmegaConf


def run_id() -> str:
    """A run directory name that every rank of one job agrees on and no two jobs share.

    SLURM: the job (and array task) id, so a requeued job finds its own directory again. torchrun: its
    rendezvous id (``--standalone`` makes a fresh one). A plain process: date-time plus a random suffix.
    """
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    rdzv = env.get("TORCHELASTIC_RUN_ID", "")
    if rdzv and rdzv != "none":
        return f"torchrun-{rdzv}"
    if int(env.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            "several processes but no shared run id: start with `torchrun --standalone ...`, "
            "`torchrun --rdzv-id=NAME ...`, or give hydra.run.dir=PATH so all ranks use one directory"
        )
    return time.strftime("%Y-%m-%d_%H-%M-%S") + "_" + secrets.token_hex(2)


def process_rank() -> int:
    """This process's global rank as the launcher set it (torchrun: RANK, srun: SLURM_PROCID), before any
    process group exists."""
    env = os.environ
    return int(env.get("RANK") or env.get("SLURM_PROCID") or 0)


def if_rank_zero(value, otherwise=None):
    """``value`` in the rank-0 process, ``otherwise`` in the others (so only rank 0 writes shared files)."""
    return value if process_rank() == 0 else otherwise


def run_name(experiment: str | None) -> str:
    return "default" if experiment in (None, "", "None", "null") else str(experiment)


def default_precision(mode: str = "auto") -> str:
    """fp32 on CPU (bf16 autocast measured 2.2-2.5x slower there), bf16-mixed on GPUs that support it."""
    if mode != "auto":
        return mode
    import torch  # here, not at the top: train.py validates its config before torch is imported

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def register_resolvers() -> None:
    from mixerlab.sweep import register_sweep_resolvers

    register_sweep_resolvers()
    resolvers = (("run_id", run_id), ("run_name", run_name), ("precision", default_precision),
                 ("if_rank_zero", if_rank_zero))
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


def flatten(node, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay leaves (compared whole). The report compares runs'
    configs with it; the local dashboards log them as flat parameters."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out
