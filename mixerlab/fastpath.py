"""The fast training path: compile, GEMM/optimizer/attention kernels, CPU threads, TF32.

Everything here changes how fast a step runs, never what it computes (up to floating-point reassociation):
a compiled backbone and a backbone whose Linear layers run on oneDNN (:mod:`mixerlab.onednn_linear`) keep
their parameter names, so checkpoints and ``weights_sha256`` are the same either way. Options live in
``conf/fastpath/default.yaml``; precision stays ``trainer.precision``. Each default is backed by a
measurement in BENCHMARKS.md ("Training performance").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mixerlab.errors import ConfigError
from mixerlab.onednn_linear import onednn_linear_available, use_onednn_linear

SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
OPT_IMPLS = ("auto", "fused", "foreach", "loop")
CPU_LINEAR = ("auto", "onednn", "aten")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# torch.optim classes with a fused kernel on CPU and CUDA (torch >= 2.4)
FUSED_OPTS = ("adam", "adamw", "sgd", "adagrad")


def _auto(value, on_cuda, on_cpu):
    if value == "auto":
        return on_cuda if torch.cuda.is_available() else on_cpu
    return value


def set_sdpa_backends(backends: Sequence[str] | None) -> None:
    """Allow only these ``scaled_dot_product_attention`` kernels (process-wide); None allows all.

    The switches are torch's global ones; they steer the CPU dispatcher too (flash vs math).
    """
    if backends is None:
        return
    unknown = set(backends) - set(SDPA_BACKENDS)
    if unknown or not backends:
        raise ConfigError(
            f"fastpath.sdpa_backends={list(backends)}: choose a non-empty subset of {list(SDPA_BACKENDS)} "
            "or null to let torch pick"
        )
    torch.backends.cuda.enable_flash_sdp("flash" in backends)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in backends)
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in backends)
    torch.backends.cuda.enable_math_sdp("math" in backends)


# Set by a launcher that runs several jobs side by side (hydra/launcher=local_parallel): this job's share of
# the cores. It is read only by ``auto``, so the job's config, and with it the sweep's naming, is unchanged.
CORES_ENV = "MIXERLAB_CORES_PER_JOB"


def cpu_threads(setting: int | str | None, num_workers: int) -> int | None:
    """Intra-op threads for CPU training: ``auto`` leaves one core to each data-loader worker.

    ``auto`` counts the cores this job may use: the affinity mask, or the share a parallel launcher gave it
    in ``MIXERLAB_CORES_PER_JOB``, whichever is smaller. With OpenMP's spinning barriers, more busy threads
    than cores slows every op to the scheduler's time slice (measured: a 2-thread step 15x slower than a
    1-thread step while the 2 cores were shared).
    """
    if setting is None or torch.cuda.is_available():
        return None
    if setting == "auto":
        from data.workers import available_cores  # the affinity mask: a SLURM or container limit counts

        cores = available_cores()
        share = os.environ.get(CORES_ENV, "").strip()
        if share:
            if not share.isdigit() or int(share) < 1:
                raise ConfigError(f"{CORES_ENV}={share!r}: a positive number of cores (set by the launcher)")
            cores = min(cores, int(share))
        return max(1, cores - num_workers)
    if not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"fastpath.cpu_threads={setting!r}: a positive integer, 'auto' or null")
    return setting


def cpu_vendor() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def wants_onednn_linear(setting: str, compiled: bool) -> bool:
    """Whether fp32 CPU Linear layers should run on oneDNN (:mod:`mixerlab.onednn_linear`).

    ``auto``: yes when training on the CPU, uncompiled, on an AMD CPU, where MKL runs AVX2 code and oneDNN
    AVX-512 (measured 1.85x per Linear layer here); ``onednn`` forces it on any CPU; ``aten`` keeps torch's.
    """
    if setting not in CPU_LINEAR:
        raise ConfigError(f"fastpath.cpu_linear={setting!r} is not one of {list(CPU_LINEAR)}")
    if setting == "aten" or torch.cuda.is_available() or not onednn_linear_available():
        return False
    if setting == "onednn":
        if compiled:
            raise ConfigError(
                "fastpath.cpu_linear=onednn with fastpath.compile.enabled: choose one (inductor "
                "picks its own CPU GEMMs)"
            )
        return True
    return not compiled and cpu_vendor() == "AuthenticAMD"


def compile_backbone(backbone: nn.Module, options: Mapping | None) -> bool:
    """``torch.compile`` the backbone in place (``nn.Module.compile``): its state-dict keys stay as they are.

    ``options``: ``{enabled: auto|true|false, mode, fullgraph, dynamic}``; auto compiles on CUDA only
    (on this 2-core CPU the compile time outweighs the gain for short runs, see BENCHMARKS.md).
    Returns whether it compiled.
    """
    options = dict(options or {})
    enabled = _auto(options.pop("enabled", False), True, False)
    if not enabled:
        return False
    mode = options.pop("mode", "default") or "default"
    if mode not in COMPILE_MODES:
        raise ConfigError(f"fastpath.compile.mode={mode!r} is not one of {list(COMPILE_MODES)}")
    unknown = set(options) - {"fullgraph", "dynamic"}
    if unknown:
        raise ConfigError(
            f"fastpath.compile has unknown keys {sorted(unknown)}; valid: enabled, mode, fullgraph, dynamic"
        )
    backbone.compile(mode=mode, **options)
    return True


def optimizer_impl_kwargs(
    impl: str, opt: str, explicit: Mapping | None = None, cuda: bool | None = None
) -> dict:
    """Keyword arguments that pick a torch optimizer's kernel: ``fused``, ``foreach`` or the per-tensor loop.

    ``auto`` = fused where torch has a fused kernel for ``opt`` (CPU and CUDA), else foreach on CUDA and
    torch's default elsewhere. Keys the user already put in ``recipe.opt_kwargs`` win.
    """
    if impl not in OPT_IMPLS:
        raise ConfigError(f"recipe.opt_impl={impl!r} is not one of {list(OPT_IMPLS)}")
    explicit = dict(explicit or {})
    if "fused" in explicit or "foreach" in explicit:
        return {}
    name = opt.lower().split("_")[-1]
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if impl == "auto":
        impl = "fused" if name in FUSED_OPTS else ("foreach" if cuda else "default")
    if impl == "fused":
        if name not in FUSED_OPTS:
            raise ConfigError(
                f"recipe.opt_impl=fused: torch has no fused kernel for opt={opt!r}; use foreach or auto"
            )
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl == "loop":
        return {"foreach": False}
    return {}


def apply_fast_path(fastpath: Mapping | None, backbone: nn.Module, num_workers: int = 0) -> dict:
    """Set the process-wide switches and compile the backbone; returns what was applied (for the summary)."""
    fastpath = dict(fastpath or {})
    applied: dict = {}
    if torch.cuda.is_available():
        precision = fastpath.get("matmul_precision", "high")
        torch.set_float32_matmul_precision(precision)  # TF32 for fp32 matmuls outside autocast
        torch.backends.cudnn.benchmark = bool(fastpath.get("cudnn_benchmark", True))
        applied["matmul_precision"] = precision
    set_sdpa_backends(fastpath.get("sdpa_backends"))
    threads = cpu_threads(fastpath.get("cpu_threads"), num_workers)
    if threads is not None:
        torch.set_num_threads(threads)
        applied["cpu_threads"] = threads
    applied["compiled"] = compile_backbone(backbone, fastpath.get("compile"))
    if wants_onednn_linear(fastpath.get("cpu_linear", "aten"), applied["compiled"]):
        applied["onednn_linear_layers"] = use_onednn_linear(backbone)
    return applied


def autocast_for(
    precision: str | int, device: torch.device
) -> tuple[contextlib.AbstractContextManager, bool]:
    """Autocast context for a Lightning precision string and whether fp16 needs a gradient scaler."""
    precision = str(precision)
    if precision in ("32", "32-true", "64", "64-true"):
        return contextlib.nullcontext(), False
    if precision in ("bf16-mixed", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16), False
    if precision in ("16-mixed", "16"):
        return torch.autocast(device.type, dtype=torch.float16), device.type == "cuda"
    raise ConfigError(
        f"trainer.precision={precision!r}: the benchmark supports 32-true, bf16-mixed, 16-mixed"
    )
