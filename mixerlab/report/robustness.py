"""The sweep report's robustness sections, from each run's ``eval.json`` and ``erf/`` (``python eval.py``);
their plot, clean against shifted top-1, lives with the other figures in plots.py.

- a table: per configuration (runs differing only in their seed), top-1 on the clean set and on every
  shifted set any run was evaluated on, mean ± std over seeds; -C sets add their (m)CE;
- the effective-receptive-field gallery: each configuration's maps (first seed that has them) side by side.

Both files are read once per run and report (:attr:`RunRecord.eval_sets`, :attr:`RunRecord.erf_record`):
a damaged one is said in one warning line naming it, and left out; the report never writes into a run.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path

from mixerlab.storage import read_derived_json

CLEAN = "clean"


def read_eval(run_dir: Path) -> dict:
    """The run's evaluated sets (those with a top-1); a damaged eval.json is said in one warning line and
    left out."""
    record = read_derived_json(Path(run_dir) / "eval.json", "evaluation record",
                               "its sets are left out of the report; move it aside and run eval.py again "
                               "for each set") or {}
    sets = record.get("sets")
    if not isinstance(sets, dict):
        return {}
    return {name: entry for name, entry in sets.items()
            if isinstance(entry, dict) and isinstance(entry.get("top1"), int | float)}


def read_erf(run_dir: Path) -> dict | None:
    """The run's ``erf/erf.json`` with its layers' map files as ``{layer: png path}`` (``files``), those that
    exist; ``None`` if it has none, or a damaged one (said in one warning line)."""
    erf_dir = Path(run_dir) / "erf"
    record = read_derived_json(erf_dir / "erf.json", "ERF record", "its maps are left out of the report; "
                               "run eval.py erf.layers=[...] again")
    if record is None:
        return None
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    layers = record.get("layers") if isinstance(record.get("layers"), list) else []
    pngs = {layer: erf_dir / str(files[str(layer)]) for layer in layers if str(layer) in files}
    shares = record.get("centre_patch_share") if isinstance(record.get("centre_patch_share"), dict) else {}
    return {**record, "files": {k: p for k, p in pngs.items() if p.is_file()}, "centre_patch_share": shares}


def eval_sets_of(groups) -> list[str]:
    """Every set any run was evaluated on, the clean one first."""
    names = {name for group in groups for run in group.runs for name in run.eval_sets}
    return sorted(names, key=lambda n: (n != CLEAN, n))


def corruption_score(entry: dict) -> tuple[str, float] | None:
    for key, label in (("mce", "mCE"), ("mce_unnormalised", "mean CE %")):
        if isinstance(entry.get(key), int | float):
            return label, float(entry[key])
    return None


def _stat(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def robustness_rows(groups) -> tuple[list[str], list[list[str]]]:
    """(column heads, rows of cells): configuration, then top-1 per set (and the -C score)."""
    sets = eval_sets_of(groups)
    heads = ["configuration"]
    for name in sets:
        heads.append(f"{name} top-1 %")
        entries = [r.eval_sets.get(name, {}) for g in groups for r in g.runs]
        score = next((s for e in entries if (s := corruption_score(e))), None)
        if score:
            heads.append(f"{name} {score[0]}")
    rows = []
    for group in groups:
        evals = [r.eval_sets for r in group.runs]
        if not any(evals):
            continue
        row = [group.label]
        for name in sets:
            row.append(_stat([e[name]["top1"] for e in evals if name in e]))
            if f"{name} mCE" in heads or f"{name} mean CE %" in heads:
                row.append(_stat([s[1] for e in evals if name in e and (s := corruption_score(e[name]))]))
        rows.append(row)
    return heads, rows


def robustness_html(groups) -> str | None:
    heads, rows = robustness_rows(groups)
    if not rows:
        return None
    out = ['<table id="robustness" class="sortable"><thead><tr>']
    out += [f'<th scope="col"><button type="button">{html.escape(h)}</button></th>' for h in heads]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cells = [f"<td>{html.escape(row[0])}</td>"]
        cells += [f'<td class="num" data-sort="{html.escape(c.split(" ")[0])}">{html.escape(c)}</td>'
                  for c in row[1:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def robustness_markdown(groups) -> list[str]:
    heads, rows = robustness_rows(groups)
    if not rows:
        return []
    lines = ["## Robustness (top-1 %, mean ± std over seeds)", "", "| " + " | ".join(heads) + " |",
             "|---|" + "---:|" * (len(heads) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def erf_gallery_html(groups) -> str | None:
    """Per configuration, the ERF maps of its first run that has them, side by side (inline PNGs)."""
    rows = []
    for group in groups:
        for run in group.runs:
            record = run.erf_record
            if record is None:
                continue
            images = []
            for layer, png in record["files"].items():
                data = base64.b64encode(png.read_bytes()).decode()
                share = record["centre_patch_share"].get(str(layer))
                shown = isinstance(share, int | float) and math.isfinite(share)
                caption = f"block {layer}" + (f" · centre patch {100 * share:.0f}%" if shown else "")
                images.append(f'<figure class="erf"><img alt="{html.escape(group.label)} block {layer}" '
                              f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption>'
                              "</figure>")
            if images:
                rows.append(f'<div class="erf-row" data-config="{html.escape(group.label)}"><h3>'
                            f"{html.escape(group.label)}</h3>" + "".join(images) + "</div>")
            break
    if not rows:
        return None
    style = ("<style>.erf-row{display:flex;gap:8px;align-items:flex-start;flex-wrap:wrap}"
             ".erf-row h3{width:160px;font-size:14px} figure.erf img{width:180px}</style>")
    return style + "\n".join(rows)


def erf_markdown(groups, out_dir: Path) -> list[str]:
    import os

    lines = []
    for group in groups:
        for run in group.runs:
            pngs = list((run.erf_record or {}).get("files", {}).values())
            if pngs:
                links = " ".join(f"![{group.label} {p.stem}]({Path(os.path.relpath(p, out_dir)).as_posix()})"
                                 for p in pngs)
                lines.append(f"| {group.label} | {links} |")
                break
    if not lines:
        return []
    return ["## Effective receptive fields", "", "| configuration | blocks |", "|---|---|", *lines, ""]
