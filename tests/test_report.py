"""The sweep report from a sweep on disk: rows, seed aggregation, plots, model-zoo Markdown, offline HTML."""

from __future__ import annotations

import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mixerlab.report import SweepReport, read_curves
from scripts.report import main as report_main
from tests.report_data import JOBS, make_seed_sweep, make_sweep


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    sweep = make_sweep(tmp_path_factory.mktemp("report"))
    report = SweepReport([sweep, sweep])  # the same sweep twice: still one row per job
    html_path, md_path = report.write()
    return sweep, report, html_path.read_text(), md_path.read_text()


class _Page(HTMLParser):
    """Rows of the runs table, links, and anything that would load from outside the file."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.links: list[str] = []
        self.external: list[str] = []
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr" and self._table == "runs" and "data-run" in attrs:
            self.rows.append(attrs["data-run"])
        if tag == "a":
            self.links.append(attrs["href"])
        for key in ("src", "href"):
            if re.match(r"^(https?:)?//", attrs.get(key) or ""):
                self.external.append(attrs[key])
        if tag in ("script", "link", "img", "iframe") and (attrs.get("src") or tag == "link"):
            self.external.append(f"<{tag}>")


def test_one_row_per_job_with_its_status(written):
    sweep, report, page, _ = written
    parsed = _Page()
    parsed.feed(page)
    assert sorted(parsed.rows) == sorted(JOBS)
    assert {r.job: r.status for r in report.runs} == {job: spec[0] for job, spec in JOBS.items()}
    assert "NonFiniteError: non-finite loss (nan) at step 12" in page  # a failed run says why


def test_html_is_self_contained_and_links_each_config(written):
    sweep, _, page, _ = written
    parsed = _Page()
    parsed.feed(page)
    assert parsed.external == []  # opens offline: inline CSS, JS and SVG only
    assert page.count("<svg") == 4 and "<script>" in page and "<style>" in page  # intervals, scatters, curves
    assert page.index('<figure id="intervals">') < page.index('<table id="runs"')  # the main picture on top
    configs = [link for link in parsed.links if link.endswith("config.yaml")]
    assert len(configs) == 5 + 2  # five runs with a config, two configuration groups
    assert all((sweep / link).is_file() for link in configs)


def test_seeds_of_one_configuration_are_aggregated_as_mean_and_std(written):
    _, report, page, _ = written
    groups = {g.label: g for g in report.groups}
    assert sorted(groups) == ["mixer=attention", "mixer=pooling"]  # failed/pending runs are not results
    mean, std = groups["mixer=attention"].stat("top1")
    assert (mean, std) == (statistics.fmean([91, 93, 95]), statistics.stdev([91, 93, 95]))
    assert "93.00 ± 2.00 (n=3)" in page


def test_answer_crowns_no_winner_the_seeds_do_not_back_and_names_the_cheaper_one_close_to_it(written):
    _, report, page, _ = written
    top, cheaper = report.answer_lines()[:2]
    # attention 91/93/95 against pooling's one seed 92.5: no interval on pooling, so no verdict
    assert top.startswith("No verdict: top two (mixer=attention 93.00, mixer=pooling 92.50) not separated at "
                          "n=3 vs 1 seeds")
    assert "ahead" not in top and "Best" not in top
    command = top.split("run more seeds: ", 1)[1]
    assert command.startswith("python train.py -m mixer=attention,pooling seed=3,")  # seeds 0-2 are taken
    assert cheaper.startswith("Fewest FLOPs among those not separated from mixer=attention — mixer=pooling")
    assert "186K params, 4M FLOPs/img" in cheaper


def test_markdown_is_a_model_zoo_table(written):
    sweep, _, _, md = written
    lines = md.splitlines()
    head = lines.index("| model | params | FLOPs | top-1 | step mem MB | wall s | config |")
    assert lines[head + 2] == "| mixer=attention | 203K | 7M | 93.00 ± 2.00 (n=3) | 51.0 ± 1.0 (n=3) | " \
                              "31.0 ± 1.0 (n=3) | [config](mixer=attention,seed=0/config.yaml) |"
    assert lines[head + 3].startswith("| mixer=pooling | 186K | 4M | 92.50 | 23.0 | 33.0 |")
    assert "step mem MB: peak tensor memory of one training step per run — cpu: peak of live tensor " \
           "storages over one training step at batch 64" in md
    for plot in re.findall(r"!\[\w+\]\(([^)]+)\)", md):
        assert (sweep / plot).read_text().startswith("<svg")


def test_an_epoch_logged_twice_keeps_its_last_row(tmp_path):
    sweep = make_sweep(tmp_path)
    curves = read_curves(sweep / "mixer=pooling,seed=0" / "metrics.csv")
    assert [(row["epoch"], row["val/top1"]) for row in curves] == [(0, 50.0), (1, 71.0), (2, 92.5)]


def test_report_script_writes_html_and_markdown(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweeps")
    other = make_sweep(tmp_path / "sweeps", name="mixer+seed-ffff0000")
    assert report_main([str(sweep), str(other), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'out' / 'report.html'}" in out
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<tr class=") == 2 * len(JOBS)  # two sweeps side by side, a sweep column
    assert "mixer+seed-ffff0000" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "missing")])
    assert "no such sweep directory" in capsys.readouterr().err


def test_report_of_a_directory_of_plain_runs_finds_what_varies(tmp_path):
    sweep = make_sweep(tmp_path)
    (sweep / "sweep.json").unlink()  # e.g. runs/default/: single runs, no index
    report = SweepReport([sweep])
    assert len(report.runs) == len(JOBS) - 1  # the pending job never ran: nothing on disk
    assert report.varied == ["seed"] and {r.mixer for r in report.runs} >= {"attention", "pooling"}
    assert Path(report.write()[0]).is_file()


def test_report_shows_each_runs_step_memory_and_how_it_was_measured(written):
    _, report, page, _ = written
    assert "<button type=\"button\">step mem MB</button>" in page and "peak mem MB" not in page
    assert 'id="memory-method"' in page and "live tensor storages" in page and "at batch 64" in page
    groups = {g.label: g for g in report.groups}
    assert groups["mixer=attention"].stat("step_memory_mb") == (51.0, 1.0)
    assert groups["mixer=pooling"].stat("step_memory_mb")[0] == 23.0


def test_one_sweep_per_seed_pools_the_seeds_of_each_configuration(tmp_path):
    seed0 = make_seed_sweep(tmp_path, "mixer-aaaa0000", 0, {"attention": (60.0, 1e-3),
                                                        "pooling": (40.0, 1e-3)})
    seed1 = make_seed_sweep(tmp_path, "mixer-bbbb1111", 1, {"attention": (70.0, 1e-3),
                                                        "pooling": (44.0, 1e-3)})
    other_lr = make_seed_sweep(tmp_path, "mixer-cccc2222", 2, {"attention": (99.0, 5e-4)})
    report = SweepReport([seed0, seed1, other_lr])
    groups = {(g.label, len(g.runs)): g for g in report.groups}
    assert sorted(groups) == [("mixer=attention", 1), ("mixer=attention", 2), ("mixer=pooling", 2)]
    pooled = groups[("mixer=attention", 2)]
    assert pooled.stat("top1") == (65.0, statistics.stdev([60.0, 70.0]))
    assert {r.summary["seed"] for r in pooled.runs} == {0, 1}  # the other learning rate is its own row
    assert groups[("mixer=attention", 1)].runs[0].summary["top1"] == 99.0
    markdown = report.markdown(tmp_path, {})
    assert "| mixer-aaaa0000 + mixer-bbbb1111: mixer=attention |" in markdown
    assert "65.00 ± 7.07 (n=2)" in markdown


def test_a_seed_run_again_in_another_sweep_is_not_counted_as_a_second_seed(tmp_path):
    first = make_seed_sweep(tmp_path, "mixer-aaaa0000", 0, {"attention": (60.0, 1e-3)})
    again = make_seed_sweep(tmp_path, "mixer-dddd3333", 0, {"attention": (61.0, 1e-3)})
    report = SweepReport([first, again])
    assert sorted((g.sweep, len(g.runs)) for g in report.groups) == [("mixer-aaaa0000", 1),
                                                                       ("mixer-dddd3333", 1)]
