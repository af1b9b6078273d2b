"""Time to draw one digit-task canvas, this checkout's renderer against another commit's, side by side.

    python scripts/bench_render.py --against 82716ec              # 7 alternating rounds of 1,000 canvases
    python scripts/bench_render.py --against HEAD --count 50 --rounds 1 --tasks marker   # a smoke run

The other commit's ``data/digit_tasks.py`` (``git show REV:data/digit_tasks.py``) is loaded as a module of its
own beside this checkout's, both over the same training bank. Each round renders the same ``--count``
training samples (index i, seed ``sample_seed(0, 0, i)``) with one renderer and then the other, alternating
which goes first; the figure per renderer is the median over rounds of wall time per canvas. Both renderers
must give the same bytes for every sample (``same_bytes``): a faster renderer that draws other canvases
would change every result. The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import data.digit_tasks as current  # noqa: E402
from data.sampling import sample_seed  # noqa: E402
from scripts.bench_train import machine  # noqa: E402


def load_renderer(rev: str, folder: Path):
    """``data/digit_tasks.py`` at ``rev`` as a module named ``digit_tasks_at_<rev>``."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:data/digit_tasks.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as error:
        sys.exit(f"--against {rev}: git cannot show data/digit_tasks.py there ({error.stderr.strip()}); "
                 "give a commit of this repository that has the file")
    name = f"digit_tasks_at_{rev.replace('-', '_').replace('~', '_').replace('^', '_')}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def render_all(module, bank, task: str, keys: list[tuple[int, int]]) -> tuple[float, bytes]:
    start = time.perf_counter()
    canvases = [module.render(task, bank, index, seed) for index, seed in keys]
    seconds = time.perf_counter() - start
    return seconds, b"".join(canvas.tobytes() + bytes([label]) for canvas, label in canvases)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the commit whose renderer to time beside this one")
    parser.add_argument("--count", type=int, default=1000, help="canvases per renderer per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (medians are over rounds)")
    parser.add_argument("--tasks", nargs="+", default=sorted(current.TASKS), choices=sorted(current.TASKS))
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1:
        parser.error(f"--count {args.count} and --rounds {args.rounds} must both be at least 1")
    keys = [(i, sample_seed(0, 0, i)) for i in range(args.count)]
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        other = load_renderer(args.against, Path(folder))
        banks = {"this": current.digit_banks()[0], "other": other.digit_banks()[0]}  # each module's own
        for task in args.tasks:
            times: dict[str, list[float]] = {"this": [], "other": []}
            outputs = {}
            for round_ in range(args.rounds):
                order = [("this", current), ("other", other)]
                for label, module in order if round_ % 2 == 0 else order[::-1]:
                    seconds, outputs[label] = render_all(module, banks[label], task, keys)
                    times[label].append(seconds / args.count * 1e6)
            this, theirs = statistics.median(times["this"]), statistics.median(times["other"])
            figures[task] = {"this_us": round(this, 1), "other_us": round(theirs, 1),
                             "other_over_this": round(theirs / this, 2),
                             "same_bytes": outputs["this"] == outputs["other"]}
            print(f"{task:15s} {args.against} {theirs:7.1f} us/canvas | this checkout {this:7.1f} us/canvas "
                  f"| {args.against} / this {theirs / this:.2f} | same bytes: {figures[task]['same_bytes']}")
    result = {
        "bench": "render", "against": args.against, "count": args.count, "rounds": args.rounds,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "python": platform.python_version(), "numpy": np.__version__},
        "tasks": figures,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
