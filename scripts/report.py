"""Compare the runs of one or more sweeps: ``python scripts/report.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]``.

Writes ``report.html`` (self-contained: open it offline, no server), ``report.md`` (model-zoo table) and
``report.json`` (intervals, pairwise verdicts, seed-unstable flags, the cross-task aggregate) into the sweep
directory (one sweep) or the sweeps' common parent (several), or ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixerlab import stats  # noqa: E402
from mixerlab.errors import ConfigError, DiskFullError  # noqa: E402
from mixerlab.report import SweepReport  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="sweep directories (runs/sweeps/<name>) "
                        "or directories of run directories")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report files")
    parser.add_argument("--tie-within", type=float, default=None, metavar="M",
                        help="call a pair that is not separated 'tied' when two one-sided Welch tests put "
                             "its top-1 difference inside ±M points (off by default; the sweeper's "
                             "hydra.sweeper.tie_within)")
    args = parser.parse_args(argv)
    if args.tie_within is not None and not stats.is_margin(args.tie_within):
        parser.error(f"--tie-within {args.tie_within:g}: a positive margin in top-1 points")
    try:
        report = SweepReport(args.sweep_dirs, tie_within=args.tie_within)
    except FileNotFoundError as error:
        parser.error(str(error))
    try:
        html_path, md_path = report.write(args.out)
    except (ConfigError, DiskFullError) as error:  # one line; every file it writes is atomic
        raise SystemExit(f"{type(error).__name__}: {error}") from None
    print(report.status_line())
    for line in report.answer_lines():
        print(line)
    print(f"report: {html_path}\nmarkdown: {md_path}\nstatistics: {report.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
