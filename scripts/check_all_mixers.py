"""Every mixer trains: one multirun ``python train.py -m mixer=<every conf/mixer/*.yaml>`` with tiny budgets.

    python scripts/check_all_mixers.py                  # default dataset (digits), 2 train + 1 val batch each
    python scripts/check_all_mixers.py backbone.head=cls  # extra overrides go to every job
    python scripts/check_all_mixers.py --print          # the command only

The mixer list is discovered from ``conf/mixer/``, so a new yaml is checked with no change here. Each job
runs one epoch cut to two training batches and one validation batch (start-up, steps, validation,
checkpoint, summary). The sweep lands in ``--out`` (default ``runs/sweeps/mixer_check/<time>``). Exit
status 0 when every mixer's job wrote ``status: completed``; otherwise the failures are listed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "callbacks.progress.refresh_rate=0",
    "sweep.report=false",
)


def discover_mixers() -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / "mixer").glob("*.yaml"))


def command(mixers: list[str], out: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "-m", f"mixer={','.join(mixers)}", *TINY,
            f"hydra.sweep.dir={out}", *extra]


def statuses(out: Path) -> dict[str, str]:
    """mixer -> status of its job, from each job's summary.json."""
    found = {}
    for path in sorted(out.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        found[summary["mixer"]] = summary["status"] + (f": {summary['error']}" if "error" in summary else "")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="sweep directory")
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    args, extra = parser.parse_known_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "runs" / "sweeps" / "mixer_check" / stamp).resolve()
    mixers = discover_mixers()
    cmd = command(mixers, out, extra)
    print(" ".join(cmd[1:]), flush=True)
    if args.print:
        return 0
    proc = subprocess.run(cmd, cwd=REPO)
    found = statuses(out)
    bad = {m: found.get(m, "no summary.json") for m in mixers if not found.get(m, "").startswith("completed")}
    for mixer in mixers:
        print(f"{mixer:20s} {found.get(mixer, 'no summary.json')}")
    print(f"{len(mixers) - len(bad)}/{len(mixers)} mixers completed; sweep: {out}", flush=True)
    return 0 if not bad and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
