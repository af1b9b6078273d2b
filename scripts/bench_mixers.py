"""Cost of each token mixer alone as the token count grows: forward+backward (or inference) time, peak memory.

    python scripts/bench_mixers.py --threads 1                # grids 8x8 .. 112x112 (64 .. 12,544 tokens)
    python scripts/bench_mixers.py --smoke --out /tmp/bench   # tiny grids: checks the script end to end

Every mixer in ``conf/mixer/`` (discovered, so a new yaml is benchmarked with no change here), plus the
variants in ``VARIANTS`` (Fibottention's ``sparse``, attention with SSA in training, Hyena's FFT route), is
built from its yaml at a fixed width (``--dim``, ``--heads``) on a square patch grid without CLS token, in
training mode, and timed on one random batch (``--batch``): one warm-up, then the median of at least
``--repeats`` forward+backward passes, more for fast points until ``--min-seconds`` of timed passes have run.
Points predicted to exceed ``--max-memory-gb`` or ``--max-seconds`` (extrapolated from the mixer's last two
points) are skipped and recorded as such; so is a grid a mixer refuses (a ``ConfigError`` from its
constructor: a block size that does not divide the grid, ...), with the mixer's reason in ``mixers.csv``. The
headline ratios in ``PAIRS`` (sparse Fibottention over dense attention, Hyena's Toeplitz route over its FFT
route) are timed side by side, alternating the two ``--pair-repeats`` times (median of the per-pair ratios),
so load from other processes hits both alike.
Writes ``mixers.csv``, ``mixers.md`` (the same as a table), ``mixers.png`` (log-log time vs tokens) and
``summary.json`` to ``--out``; the fitted exponent is the least-squares slope of log time vs log tokens over
the points with at least ``--fit-min-tokens`` tokens. The last stdout line is the headline JSON.

``--inference``: forward passes alone, without gradients, each mixer in eval mode and in its deployment form
(``mixers.contract.fuse_for_inference``: FFNified's RepVGG branches and conv + BatchNorm pairs fused into
single convs, as FFNet times its models), the cost a deployed model pays. Training passes keep the branches.

Peak memory (of the warm-up pass): on CUDA, ``torch.cuda.max_memory_allocated``; on CPU, the rise of the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident
set just before the pass, after ``malloc_trim(0)`` has handed glibc's free heap pages back to the system,
so that memory the pass reuses from earlier points is counted again when it is touched.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra.utils import instantiate  # noqa: E402

from mixerlab.build import CONF_DIR, compose_config  # noqa: E402
from mixerlab.errors import ConfigError  # noqa: E402
from mixerlab.run import atomic_write_text  # noqa: E402
from mixers.contract import TokenLayout, fuse_for_inference  # noqa: E402

FULL_GRIDS = (8, 14, 20, 28, 40, 56, 80, 112)
SMOKE_GRIDS = (4, 8)
# name -> config overrides; every conf/mixer/*.yaml is benchmarked under its own name
VARIANTS = {
    "fibottention_sparse": ["mixer=fibottention", "mixer.variant=sparse"],
    "attention_ssa": ["mixer=attention", "mixer.ssa={factor:4,local_bias:false}"],
    "attention_ssa_local": ["mixer=attention", "mixer.ssa={factor:4,local_bias:true}"],
    "hyena_fft": ["mixer=hyena", "mixer.long_conv=fft"],
}
# headline key -> (baseline, other): time(other) / time(baseline), timed side by side
PAIRS = {
    "fibottention_sparse_over_attention": ("attention", "fibottention_sparse"),
    "hyena_toeplitz_over_fft": ("hyena_fft", "hyena"),
}


def discover_mixers() -> list[str]:
    """Every ``conf/mixer/*.yaml`` by name, then the variants."""
    return sorted(p.stem for p in (CONF_DIR / "mixer").glob("*.yaml")) + list(VARIANTS)


@dataclass
class Point:
    mixer: str
    grid: int
    tokens: int
    seconds: float | None
    peak_mb: float | None
    status: str  # ok | skipped: <why> | failed: <error>


class PeakMemory:
    """Peak extra memory of a region, in MB (None where it cannot be measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._base = self._proc_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif self._base is not None:
            peak = self._proc_kb("VmHWM")
            self.mb = None if peak is None else max(0, peak - self._base) / 1024

    @staticmethod
    def _proc_kb(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None


def mixer_factories(names: list[str], heads: int) -> dict:
    factories = {}
    for name in names:
        overrides = VARIANTS.get(name, [f"mixer={name}"])
        cfg = compose_config([*overrides, f"backbone.num_heads={heads}"])
        factories[name] = instantiate(cfg.mixer)
    return factories


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor) -> None:
    """One timed pass: forward+backward for a module in training mode, a gradient-free forward in eval."""
    if not module.training:
        with torch.no_grad():
            module(x)
    else:
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()


def time_fwd_bwd(
    module: torch.nn.Module, x: torch.Tensor, repeats: int, min_seconds: float = 0.0
) -> tuple[float, float | None]:
    """Median seconds of a pass (``fwd_bwd``) after one warm-up pass, and the warm-up's peak MB."""
    with PeakMemory(x.device) as memory:
        fwd_bwd(module, x)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 100):
        start = time.perf_counter()
        fwd_bwd(module, x)
        times.append(time.perf_counter() - start)
    return statistics.median(times), memory.mb


def build(factories: dict, name: str, grid: int, args: argparse.Namespace):
    device = torch.device(args.device)
    torch.manual_seed(0)
    layout = TokenLayout(grid=(grid, grid), num_prefix=0)
    module = factories[name](dim=args.dim, layout=layout, layer_index=0, num_layers=1).to(device)
    if args.inference:
        module = fuse_for_inference(module, inplace=True)
    x = torch.randn(args.batch, grid * grid, args.dim, device=device, requires_grad=not args.inference)
    return module, x


def measure(point: Point, factories: dict, args: argparse.Namespace) -> Point:
    """Time one point in place; a grid the mixer refuses at construction is skipped with its reason."""
    try:
        module, x = build(factories, point.mixer, point.grid, args)
    except ConfigError as error:
        point.status = f"skipped: {str(error).splitlines()[0][:160]}"
        return point
    try:
        point.seconds, point.peak_mb = time_fwd_bwd(module, x, args.repeats, args.min_seconds)
    except (RuntimeError, MemoryError) as error:  # out of memory, or a mixer's own limit
        point.status = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    del module, x
    return point


def paired_ratio(factories: dict, a: str, b: str, grid: int, args: argparse.Namespace) -> float | None:
    """Median over alternating passes of time(b) / time(a) at one grid size."""
    if a not in factories or b not in factories:
        return None
    (module_a, x), (module_b, _) = build(factories, a, grid, args), build(factories, b, grid, args)
    modules = [module_a, module_b]
    ratios = []
    for i in range(args.pair_repeats + 1):
        seconds = [time_fwd_bwd(module, x, 1)[0] for module in modules]
        if i:  # the first round warms up
            ratios.append(seconds[1] / seconds[0])
    return statistics.median(ratios) if ratios else None


def predicted(points: list[Point], tokens: int, field: str, floor: float = 0.0) -> float | None:
    """Extrapolate a field to ``tokens`` from the mixer's last two measured points, with the exponent
    between them clamped to [1, 2.5] (2 with a single point). Values below ``floor`` (page-level noise for
    memory) count as ``floor``: dropping them instead would extrapolate from an older, noisier point (a
    first pass's 12 MB at 64 tokens, squared up to 7 GB at 1,600)."""
    measured = [p for p in points if p.status == "ok" and getattr(p, field) is not None]
    if not measured:
        return None
    value = lambda p: max(getattr(p, field), floor)  # noqa: E731
    last = measured[-1]
    if value(last) <= 0:
        return None
    exponent = 2.0
    if len(measured) >= 2 and value(measured[-2]) > 0:
        prev = measured[-2]
        exponent = math.log(value(last) / value(prev)) / math.log(last.tokens / prev.tokens)
    return value(last) * (tokens / last.tokens) ** min(2.5, max(1.0, exponent))


def pass_name(args: argparse.Namespace) -> str:
    return "inference forward (fused)" if args.inference else "forward+backward"


def fit_exponent(points: list[Point], min_tokens: int) -> float | None:
    xs = [math.log(p.tokens) for p in points if p.status == "ok" and p.tokens >= min_tokens]
    ys = [math.log(p.seconds) for p in points if p.status == "ok" and p.tokens >= min_tokens]
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.mixers or discover_mixers()
    factories = mixer_factories(names, args.heads)
    points: list[Point] = []
    for name in names:
        mine: list[Point] = []
        for grid in args.grids:
            tokens = grid * grid
            point = Point(name, grid, tokens, None, None, "ok")
            time_guess = predicted(mine, tokens, "seconds")
            memory_guess = predicted(mine, tokens, "peak_mb", floor=8.0)  # page-level noise below
            if time_guess and time_guess * (args.repeats + 1) > args.max_seconds:
                point.status = f"skipped: predicted {time_guess:.1f} s per pass"
            elif memory_guess and memory_guess > args.max_memory_gb * 1024:
                point.status = f"skipped: predicted {memory_guess / 1024:.1f} GB"
            else:
                measure(point, factories, args)
            mine.append(point)
            shown = f"{point.seconds * 1e3:10.2f} ms" if point.seconds is not None else point.status
            memory = f"{point.peak_mb:9.1f} MB" if point.peak_mb is not None else ""
            print(f"{name:22s} {grid:4d}x{grid:<4d} {tokens:6d} tokens  {shown} {memory}", flush=True)
        points += mine
    grid = 56 if 56 in args.grids else max(args.grids)
    ratios = {key: paired_ratio(factories, a, b, grid, args) for key, (a, b) in PAIRS.items()}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "mixers.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    exponents = {
        name: fit_exponent([p for p in points if p.mixer == name], args.fit_min_tokens) for name in names
    }
    plot(points, exponents, out / "mixers.png", args)
    (out / "mixers.md").write_text(markdown_table(points, exponents, args))
    return headline(points, exponents, ratios, grid, args, out)


def markdown_table(points: list[Point], exponents: dict, args: argparse.Namespace) -> str:
    """Milliseconds (peak MB) per mixer and token count, and the fitted exponent."""
    tokens = [g * g for g in args.grids]
    lines = [
        "| mixer | " + " | ".join(f"{t:,}" for t in tokens) + f" | exponent (>= {args.fit_min_tokens:,}) |",
        "|---|" + "---:|" * (len(tokens) + 1),
    ]
    for name, exponent in exponents.items():
        cells = []
        for t in tokens:
            p = next(p for p in points if p.mixer == name and p.tokens == t)
            if p.status != "ok":
                cells.append(p.status.split(":")[0])
            else:
                memory = f" ({p.peak_mb:.0f})" if p.peak_mb is not None else ""
                cells.append(f"{p.seconds * 1e3:.3g}{memory}")
        shown = f"{exponent:.2f}" if exponent is not None else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {shown} |")
    return "\n".join(lines) + "\n"


def plot(points: list[Point], exponents: dict, path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, (name, exponent) in enumerate(exponents.items()):
        mine = [p for p in points if p.mixer == name and p.status == "ok"]
        if mine:
            label = f"{name} (slope {exponent:.2f})" if exponent is not None else name
            style = {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}  # 11+ lines: dashes
            ax.plot(
                [p.tokens for p in mine], [p.seconds * 1e3 for p in mine], marker="o", label=label, **style
            )
    ax.set(xscale="log", yscale="log", xlabel="tokens (grid h x w)", ylabel=f"{pass_name(args)} time (ms)")
    ax.set_title(
        f"Token mixers alone: width {args.dim}, {args.heads} heads, batch {args.batch}, {args.device}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def headline(
    points: list[Point], exponents: dict, ratios: dict, grid: int, args: argparse.Namespace, out: Path
) -> dict:
    summary = {
        "benchmark": "bench_mixers",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "dim": args.dim,
        "heads": args.heads,
        "batch": args.batch,
        "passes": pass_name(args),
        "tokens": [g * g for g in args.grids],
        "fit_min_tokens": args.fit_min_tokens,
        "exponents": {k: (round(v, 3) if v is not None else None) for k, v in exponents.items()},
        "ratio_tokens": grid * grid,
        **{key: round(ratio, 4) if ratio else None for key, ratio in ratios.items()},
        "skipped": sum(p.status.startswith("skipped") for p in points),
        "failed": sum(p.status.startswith("failed") for p in points),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": datetime.date.today().isoformat(),
        "out": str(out),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixers", nargs="*", help="names (default: every conf/mixer yaml + variants)")
    parser.add_argument("--grids", type=int, nargs="+", default=None, help="grid sides (default 8 .. 112)")
    parser.add_argument("--dim", type=int, default=192, help="width (default 192, DeiT-Ti)")
    parser.add_argument("--heads", type=int, default=3, help="heads for attention-like mixers (default 3)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per point, at least")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="keep timing fast points this long")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-memory-gb", type=float, default=4.0, help="skip points predicted above this")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="skip points predicted above this")
    parser.add_argument("--pair-repeats", type=int, default=5, help="alternating passes for the ratio")
    parser.add_argument("--fit-min-tokens", type=int, default=784, help="fit the exponent from this size up")
    parser.add_argument("--out", default="runs/bench_mixers")
    parser.add_argument("--inference", action="store_true",
                        help="time eval-mode forward passes of the deployment form (fused), not training")
    parser.add_argument("--smoke", action="store_true", help="tiny grids and width: an end-to-end check")
    args = parser.parse_args(argv)
    if args.smoke:
        args.grids = args.grids or list(SMOKE_GRIDS)
        args.dim, args.heads, args.repeats, args.fit_min_tokens, args.pair_repeats = 32, 2, 1, 1, 1
        args.min_seconds = 0.0
    args.grids = sorted(args.grids or FULL_GRIDS)
    return args


if __name__ == "__main__":
    print(json.dumps(run(parse_args())))
