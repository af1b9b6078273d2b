"""Numbers as the report prints them: SI units for counts, fixed decimals for rates, intervals, links."""

from __future__ import annotations

import math
import os
from pathlib import Path


def si(value: float | None, digits: int = 3) -> str:
    """7014656 -> 7.01M; 202954 -> 203K."""
    if value is None:
        return "—"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{unit}"
    return f"{value:.{digits}g}"


def fmt(value: float | None, decimals: int | None) -> str:
    if value is None:
        return "—"
    return si(value) if decimals is None else f"{value:,.{decimals}f}"


def fmt_stat(mean: float | None, std: float | None, decimals: int | None, n: int, unit: str = "") -> str:
    """``97.10 ± 0.42% (n=3)``; a single run's value alone."""
    if mean is None:
        return "—"
    if std is None:
        return fmt(mean, decimals) + unit
    return f"{fmt(mean, decimals)} ± {fmt(std, decimals)}{unit} (n={n})"


def rel_link(target: Path | None, out_dir: Path) -> str | None:
    return None if target is None else Path(os.path.relpath(target, out_dir)).as_posix()


def fmt_interval(low: float, high: float, decimals: int = 2) -> str:
    """``[91.2, 94.8]``; an unbounded side (one seed) as ``∞``."""
    def side(value: float) -> str:
        return f"{value:.{decimals}f}" if math.isfinite(value) else ("−∞" if value < 0 else "∞")

    return f"[{side(low)}, {side(high)}]"
