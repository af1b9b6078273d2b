"""The sweep report from a sweep on disk: rows, seed aggregation, plots, model-zoo Markdown, offline HTML."""

from __future__ import annotations

import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from mixerlab import stats
from mixerlab.report import SweepReport, read_curves
from scripts.report import main as report_main
from tests.report_data import JOBS, TASK_SEEDS, make_seed_sweep, make_sweep, make_task_sweep


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
    top, adaptive, cheaper = report.answer_lines()[:3]
    # attention 91/93/95 against pooling's one seed 92.5: no interval on pooling, so no verdict
    assert top.startswith("No verdict: top two (mixer=attention 93.00, mixer=pooling 92.50) not separated at "
                          "n=3 vs 1 seeds")
    assert "ahead" not in top and "Best" not in top
    command = top.split("run more seeds: ", 1)[1]
    assert command.startswith("python train.py -m mixer=attention,pooling seed=3,")  # seeds 0-2 are taken
    assert adaptive.endswith("python train.py -m mixer=attention,pooling hydra/sweeper=until_separated "
                             "hydra/launcher=local_parallel")
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
    assert f"statistics: {tmp_path / 'out' / 'report.json'}" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]
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


# ---------------------------------------------------------------------------------------------- statistics
@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    sweeps = [make_task_sweep(root, task, classes, seeds) for (task, classes), seeds in TASK_SEEDS.items()]
    report = SweepReport(sweeps)
    html_path, md_path = report.write(root)
    tasks = {t.task.label.split(" ")[0]: t for t in report.statistics.tasks}
    return report, tasks, html_path.read_text(), md_path.read_text(), json.loads(report.json_path.read_text())


def _cell(task, mixer):
    return next(c for c in task.cells if c.row == f"mixer={mixer}")


def _pair(task, x, y):
    return task.pair(_cell(task, x), _cell(task, y))


def test_each_configuration_has_its_t_interval_on_its_own_task(two_tasks):
    _, tasks, _, _, _ = two_tasks
    assert sorted(tasks) == ["odd_one_out", "same_different"]
    assert tasks["odd_one_out"].task.chance == 10.0 and tasks["same_different"].task.chance == 50.0
    for (name, _), seeds in TASK_SEEDS.items():
        for mixer, values in seeds.items():
            cell = _cell(tasks[name], mixer)
            low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values),
                                               scale=statistics.stdev(values) / math.sqrt(len(values)))
            assert cell.n == len(values) and cell.summary.mean == pytest.approx(statistics.fmean(values))
            assert (cell.summary.interval.low, cell.summary.interval.high) == pytest.approx((low, high))
    # a pair is never made across tasks
    for task in tasks.values():
        assert all(p.a.group.task == p.b.group.task == task.task for p in task.pairs)


def test_pairs_one_key_apart_get_verdicts_with_holm_over_the_task(two_tasks):
    _, tasks, _, _, _ = two_tasks
    odd, same = tasks["odd_one_out"], tasks["same_different"]
    assert len(odd.pairs) == 10 and len(same.pairs) == 6  # every pair differs in the mixer alone
    # identity's file also sets backbone.head: gap, which comes with the choice, not on top of it
    assert _pair(odd, "pooling", "identity").contrast == "mixer=pooling vs mixer=identity"
    clear = _pair(odd, "spectral", "attention")
    assert clear.separated and clear.verdict == "mixer=spectral ahead"
    assert clear.comparison.diff == pytest.approx(30.0) and clear.seeds_to_separate == "—"
    overlapping = _pair(same, "attention", "spectral")
    assert not overlapping.separated and overlapping.verdict == "not separated at n=3 seeds"
    # Holm: uncorrected, pooling is above identity; with ten pairs in the family it is not separated
    close = _pair(odd, "pooling", "identity")
    assert close.comparison.p_value < 0.05 and not close.separated
    welch = scipy_stats.ttest_ind(TASK_SEEDS[("odd_one_out", 10)]["pooling"],
                                  TASK_SEEDS[("odd_one_out", 10)]["identity"], equal_var=False)
    assert close.comparison.p_value == pytest.approx(welch.pvalue)
    for task in (odd, same):
        p_values = sorted(p.comparison.p_value for p in task.pairs)
        # step-down: the i-th smallest p against alpha / (m - i), stopping at the first that fails
        expected, still = {}, True
        for i, p in enumerate(p_values):
            still = still and p <= 0.05 / (len(p_values) - i)
            expected[p] = still
        assert [p.separated for p in task.pairs] == [expected[p.comparison.p_value] for p in task.pairs]
    assert close.seeds_to_separate.isdigit() or close.seeds_to_separate == ">10"


@pytest.mark.parametrize(("a", "b", "state", "shown", "beyond"), [
    ([80.0, 81.0, 79.0], [10.0, 11.0, 9.0], "separated", "—", False),
    ([10.0, 10.5, 9.5], [10.2, 9.8, 10.1], "tied", "— (tied)", False),
    ([30.0, 70.0, 72.0], [10.0, 11.0, 9.0], "open", None, None),  # the count the estimate gives
    ([10.0, 14.0, 6.0], [10.1, 13.9, 6.2], "open", ">10", True),  # past the search: tiny difference
    ([40.0], [10.0], "open", "unknown (needs 2+ seeds each)", False),
    ([10.0, 12.0], [12.0, 10.0], "open", "unknown (no difference)", False),
])
def test_an_open_pairs_seeds_to_separate_reads_a_count_more_than_shown_or_unknown(a, b, state, shown, beyond):
    from types import SimpleNamespace

    from mixerlab.report.verdicts import SEEDS_SHOWN, PairVerdict

    pair = PairVerdict(SimpleNamespace(n=len(a), row="A", unstable=False),
                       SimpleNamespace(n=len(b), row="B", unstable=False), "mixer", "A vs B",
                       stats.compare(a, b), separated=state == "separated", tied=state == "tied",
                       tie_within=2.0 if state == "tied" else None,
                       seeds_needed=stats.seeds_to_separate(a, b, 0.05))
    if shown is None:
        assert pair.seeds_needed is not None and pair.seeds_needed <= SEEDS_SHOWN
        shown, beyond = str(pair.seeds_needed), False
    assert pair.seeds_to_separate == shown and pair.beyond_shown is beyond
    assert pair.estimated is (state == "open" and not shown.startswith("unknown"))


def test_a_config_whose_seeds_split_between_chance_and_far_above_is_seed_unstable(two_tasks):
    report, tasks, _, md, _ = two_tasks
    odd = tasks["odd_one_out"]
    nystrom = _cell(odd, "nystrom")
    assert nystrom.unstable and nystrom.learned == [False, True, False, True]
    assert nystrom.learned_mean == pytest.approx(statistics.fmean([70.1, 69.8]))
    rate = scipy_stats.binomtest(2, 4).proportion_ci(0.95, method="wilson")
    text = (f"learned on 2 of 4 seeds (Wilson 95% [{100 * rate.low:.0f}%, {100 * rate.high:.0f}%]), "
            f"mean of learned seeds {statistics.fmean([70.1, 69.8]):.2f}")
    assert nystrom.describe() == text and text in md
    assert [c.row for task in tasks.values() for c in task.cells if c.unstable] == ["mixer=nystrom"]
    assert odd.threshold == pytest.approx(10 + 0.1 * 90)  # identity's bound (10.35) sits below the floor
    assert all("nystrom seed-unstable" in p.verdict for p in odd.pairs if "nystrom" in p.contrast)
    assert report.unstable_notes()[0].startswith("mixer=nystrom on odd_one_out (10 classes) is seed-unstable")


def _update_to(run: Path, commit: str, key_line: str | None = None) -> None:
    """Rewrite a run as if mixerlab at ``commit`` had written it, its config with ``key_line`` added."""
    if key_line:
        (run / "config.yaml").write_text((run / "config.yaml").read_text() + key_line)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "git_commit": commit}))


def test_a_sweep_resumed_after_an_update_that_added_a_config_key_stays_one_configuration_per_mixer(tmp_path):
    """Seeds 0-1 written before a key existed, seeds 2-3 after: the key splits no configuration, no pair
    is made of it, and the status line says so. Set by an override, or by the same commit, it still splits.
    Pooling's seeds straddle the learned threshold (19) within one mode: not seed-unstable."""
    seeds = {"identity": [12.3, 8.2, 9.7, 12.75], "pooling": [16.4, 15.6, 21.1, 18.0],
             "spectral": [94.1, 95.8, 95.6, 94.8]}
    sweep = make_task_sweep(tmp_path, "odd_one_out", 10, seeds)
    for run in sweep.iterdir():
        if run.is_dir():
            new = run.name.endswith(("seed=2", "seed=3"))
            _update_to(run, ("b" if new else "a") * 40, "keep_previous: true\n" if new else None)
    report = SweepReport([sweep])
    (task,) = report.statistics.tasks
    assert sorted((c.row, c.n) for c in task.cells) == [("mixer=identity", 4), ("mixer=pooling", 4),
                                                         ("mixer=spectral", 4)]
    assert sorted(p.contrast for p in task.pairs) == ["mixer=pooling vs mixer=identity",
                                                      "mixer=spectral vs mixer=identity",
                                                      "mixer=spectral vs mixer=pooling"]
    assert ("not told apart by keep_previous (missing from the configs of 6 run(s) written at aaaaaaa, True "
            "in the other 6: a key added since)") in report.status_line()
    pooling = _cell(task, "pooling")
    assert not pooling.unstable and pooling.learned == [False, False, True, False]
    # the same key set by an override on the new seeds is a difference the user made
    for run in sweep.iterdir():
        if run.name.endswith(("seed=2", "seed=3")):
            index = json.loads((sweep / "sweep.json").read_text())
            for job in index["jobs"]:
                if job["run_dir"] == run.name:
                    job["overrides"].append("+keep_previous=true")
            (sweep / "sweep.json").write_text(json.dumps(index))
    assert len(SweepReport([sweep]).statistics.tasks[0].cells) == 6
    # and one commit with and without the key is no update either
    for run in sweep.iterdir():
        if run.is_dir():
            _update_to(run, "c" * 40)
    index = json.loads((sweep / "sweep.json").read_text())
    for job in index["jobs"]:
        job["overrides"] = [o for o in job["overrides"] if not o.startswith("+")]
    (sweep / "sweep.json").write_text(json.dumps(index))
    report = SweepReport([sweep])
    assert len(report.statistics.tasks[0].cells) == 6 and "not told apart" not in report.status_line()


def test_the_threshold_is_identitys_upper_bound_when_identity_is_above_the_floor(tmp_path):
    seeds = {"identity": [30.0, 31.0, 32.0], "attention": [31.0, 80.0, 82.0]}
    report = SweepReport([make_task_sweep(tmp_path, "marker", 10, seeds)])
    (task,) = report.statistics.tasks
    bound = scipy_stats.t.interval(0.95, 2, loc=31.0, scale=1.0 / math.sqrt(3))[1]
    assert task.threshold == pytest.approx(bound) and "mixer=identity" in task.threshold_source
    assert _cell(task, "attention").learned == [False, True, True]


def test_configurations_on_two_tasks_get_an_iqm_of_chance_normalised_scores(two_tasks):
    report, _, _, _, _ = two_tasks
    rows = {r.row: r for r in report.statistics.aggregate}
    assert sorted(rows) == ["mixer=attention", "mixer=identity", "mixer=pooling", "mixer=spectral"]
    spectral = [(v - 10) / 90 for v in TASK_SEEDS[("odd_one_out", 10)]["spectral"]]
    spectral += [(v - 50) / 50 for v in TASK_SEEDS[("same_different", 2)]["spectral"]]
    row = rows["mixer=spectral"]
    assert row.runs == 7 and row.iqm == pytest.approx(scipy_stats.trim_mean(spectral, 0.25))
    assert row.interval.low <= row.iqm <= row.interval.high and row.interval.high - row.interval.low > 0
    assert [r.row for r in report.statistics.aggregate][0] == "mixer=spectral"


def test_report_json_holds_the_figures_the_markdown_shows(two_tasks):
    _, tasks, page, md, data = two_tasks
    assert data["alpha"] == 0.05 and data["confidence"] == 0.95
    assert "Holm" in data["methods"]["multiple_comparisons"]
    assert [t["task"] for t in data["tasks"]] == [t.task.label for t in tasks.values()]
    for task in data["tasks"]:
        for cell in task["cells"]:
            if cell["seed_unstable"]:
                assert f"| {cell['configuration']} | {cell['n']} | — | — |" in md and cell["text"] in md
            else:
                interval = f"[{cell['interval']['low']:.2f}, {cell['interval']['high']:.2f}]"
                assert f"| {cell['configuration']} | {cell['n']} | {cell['mean']:.2f} | {interval} |" in md
        for pair in task["pairs"]:
            section = md[md.index(f"### Pairs on {task['task']}"):]
            row = next(line for line in section.splitlines() if line.startswith(f"| {pair['contrast']} |"))
            assert f"| {pair['diff']:+.2f} |" in row and f"| {pair['verdict']} |" in row
            assert f"| {pair['seeds_to_separate']} |" in row
            assert pair["separated"] == pair["verdict"].split(";")[0].endswith(" ahead")
    for row in data["aggregate"]:
        tasks = ", ".join(row["tasks"])
        assert f"| {row['configuration']} | {tasks} | {row['runs']} | {row['iqm']:.3f} |" in md
    assert data["headline"][0].startswith("odd_one_out (10 classes): mixer=spectral ahead of mixer=attention")
    assert data["unstable"] and data["unstable"][0] in md


def test_the_html_opens_with_the_interval_plot_and_the_verdicts(two_tasks):
    _, _, page, _, _ = two_tasks
    order = [page.index(marker) for marker in ('id="answer"', '<figure id="intervals">', 'id="pairs-0"',
                                               'id="unstable"', 'id="aggregate"', '<table id="runs"')]
    assert order == sorted(order)
    figure = page[page.index('<figure id="intervals">'):page.index("</figure>", page.index('id="intervals"'))]
    assert "odd_one_out (10 classes)" in figure and "same_different (2 classes)" in figure
    assert "chance" in figure and "mixer=nystrom" in figure


def test_a_one_seed_sweep_gets_no_verdict_and_the_command_for_more_seeds(tmp_path):
    seeds = {"attention": [13.6], "pooling": [14.4], "spectral": [17.2]}
    report = SweepReport([make_task_sweep(tmp_path, "odd_one_out", 10, seeds)])
    top = report.answer_lines()[0]
    assert top.startswith("No verdict: top two (mixer=spectral 17.20, mixer=pooling 14.40) not separated at "
                          "n=1 seed")
    assert "ahead" not in top and "Best" not in top
    assert top.endswith("run more seeds: python train.py -m experiment=proxy_odd_one_out "
                        "mixer=spectral,pooling seed=1,2,3,4")
    assert report.answer_lines()[1].endswith("python train.py -m experiment=proxy_odd_one_out "
                                             "mixer=spectral,pooling,attention hydra/sweeper=until_separated "
                                             "hydra/launcher=local_parallel")
    html_path, _ = report.write()
    assert "mixer=spectral ahead" not in html_path.read_text()


def test_with_a_margin_pairs_shown_closer_than_it_are_tied_and_the_headline_crowns_neither(tmp_path, capsys):
    sweeps = [make_task_sweep(tmp_path, task, classes, seeds)
              for (task, classes), seeds in TASK_SEEDS.items()]
    report = SweepReport(sweeps, tie_within=2.0)
    odd = next(t for t in report.statistics.tasks if t.task.label.startswith("odd_one_out"))
    close = _pair(odd, "pooling", "identity")
    values = TASK_SEEDS[("odd_one_out", 10)]
    assert close.tie_p_value == pytest.approx(stats.equivalence_p(values["pooling"], values["identity"], 2.0))
    assert close.tied and not close.separated
    assert close.verdict == "tied within ±2 at n=4 seeds" and close.seeds_to_separate == "— (tied)"
    assert not any(p.tied for p in odd.pairs if "nystrom" in p.contrast)  # 10 / 70 bounds no margin
    assert not any(p.tied for p in odd.pairs if p.separated)
    # the default has no margin: nothing is tied
    assert not any(p.tied for t in SweepReport(sweeps).statistics.tasks for p in t.pairs)
    # the top two of a task, a fraction of a point apart over four seeds: tied, no winner
    top = make_task_sweep(tmp_path / "top", "marker", 10, {"spectral": [97.0, 97.2, 96.9, 97.1],
                                                            "feedforward": [97.1, 96.8, 97.0, 97.2],
                                                            "identity": [34.0, 35.0, 33.0, 36.0]})
    assert report_main([str(top), "--tie-within", "2"]) == 0
    out = capsys.readouterr().out
    assert "No winner: the top two (mixer=spectral 97.05, mixer=feedforward 97.02) are tied within ±2" in out
    data = json.loads((top / "report.json").read_text())
    assert data["tie_within"] == 2.0 and "TOST" in data["methods"]["tied"]
    pairs = {p["contrast"]: p for p in data["tasks"][0]["pairs"]}
    assert pairs["mixer=spectral vs mixer=feedforward"]["tied"] is True
    assert pairs["mixer=spectral vs mixer=identity"]["separated"] is True
    with pytest.raises(SystemExit):
        report_main([str(top), "--tie-within", "-1"])
    assert "--tie-within -1: a positive margin" in capsys.readouterr().err


def test_an_adaptive_sweeps_report_shows_every_look_and_why_it_stopped_and_skips_a_damaged_record(
        tmp_path, caplog):
    from mixerlab.adaptive_seeds import SeedRule, judge, record

    seeds = {"identity": [10.1, 9.9, 10.3], "pooling": [30.5, 30.9, 30.3], "spectral": [90.0, 92.0, 91.0]}
    sweep = make_task_sweep(tmp_path, "odd_one_out", 10, seeds)
    rule = SeedRule()
    tried = {f"mixer={m}": [0, 1, 2] for m in seeds}
    look = judge(1, tried, {f"mixer={m}": v for m, v in seeds.items()}, rule)
    (sweep / "until_separated.json").write_text(json.dumps(record(rule, [look], "python train.py -m ...")))
    report = SweepReport([sweep])
    report.write(sweep)
    md, data = (sweep / "report.md").read_text(), json.loads((sweep / "report.json").read_text())
    assert ("### Seeds until separated: odd_one_out-mixer+seed, every look of the sweeper (stopped: "
            "separated; every adjacent pair of the ranking is separated at look 1)") in md
    row = next(line for line in md.splitlines() if line.startswith("| 1 | 0.00625 (0.00625) | 3 |"))
    assert "mixer=spectral vs mixer=pooling: p " in row and "mixer=pooling vs mixer=identity" in row
    assert row.count("separated") == 2 and row.endswith("| — (stopped) |")
    verdicts = [p["verdict"] for p in look.pairs]
    assert data["until_separated"] == [{"sweep": sweep.name, "record": str(sweep / "until_separated.json"),
                                         "stopped": "separated", "reason": look.reason,
                                         "ranking": look.ranking, "verdicts": verdicts,
                                         "alpha_spent": 0.00625, "looks": 1}]
    assert 'id="looks-0"' in (sweep / "report.html").read_text()
    # a record cut short: one warning naming it, the rest of the report as before
    (sweep / "until_separated.json").write_text('{"looks": [')
    with caplog.at_level("WARNING"):
        damaged = SweepReport([sweep])
    assert damaged.adaptive == [] and "Seeds until separated" not in damaged.markdown(sweep, {})
    assert f"adaptive sweep record {sweep / 'until_separated.json'} is not valid JSON" in caplog.text


def test_where_the_sweeper_separated_the_top_pair_and_the_reports_family_does_not_the_headline_says_both(
        tmp_path):
    """The sweeper's Holm family is the adjacent pairs of its ranking, the report's every pair of the task: a
    top pair can be separated by the first and not by the second, and the headline says why."""
    from mixerlab.adaptive_seeds import SeedRule, judge, record

    seeds = {"attention": [45.0, 60.0, 75.0], "pooling": [10.0, 10.2, 9.8], "identity": [9.0, 9.1, 8.9]}
    sweep = make_task_sweep(tmp_path, "odd_one_out", 10, seeds)
    tried = {f"mixer={m}": [0, 1, 2] for m in seeds}
    values = {f"mixer={m}": v for m, v in seeds.items()}
    rule = SeedRule(max_seeds=3)  # one look: alpha 0.05 at it
    look = judge(1, tried, values, rule)
    assert look.stop == "separated" and all(p["separated"] for p in look.pairs)  # Holm over 2 pairs
    (sweep / "until_separated.json").write_text(json.dumps(record(rule, [look], "python train.py -m ...")))
    report = SweepReport([sweep])
    task = report.statistics.tasks[0]
    top = next(p for p in task.pairs if {p.a.row, p.b.row} == {"mixer=attention", "mixer=pooling"})
    assert not top.separated  # Holm over 3 pairs: p 0.028 for both of attention's fails at alpha / 2
    headline = report.answer_lines()
    assert headline[0].startswith("No verdict: top two (mixer=attention")
    assert headline[1] == ("The sweeper separated this pair at its last look, by Holm over the adjacent "
                           "pairs of its ranking; this report takes all 3 pairs of the task as one family, "
                           "which is stricter.")
    # a sweep that left the pair open gets no such line
    wider = SeedRule(max_seeds=4)
    open_look = judge(1, tried, values, wider)  # alpha 0.025 at each of 2 looks: the top pair stays open
    (sweep / "until_separated.json").write_text(json.dumps(record(wider, [open_look], "")))
    assert not any(line.startswith("The sweeper separated") for line in SweepReport([sweep]).answer_lines())


def test_an_adaptive_sweep_is_judged_at_its_per_look_alpha_with_its_margin_not_as_a_fixed_sample(tmp_path):
    """Seeds that a sweeper added by looking are judged as one more look (alpha / planned looks), so the
    report never calls a pair the sweeper left open; the sweeper's tie margin comes with it."""
    from mixerlab.adaptive_seeds import SeedRule, judge, record

    seeds = {"spectral": [80.0, 82.0, 81.0, 83.0], "pooling": [77.0, 79.0, 78.0, 80.5]}  # Welch p 0.028
    fixed = make_task_sweep(tmp_path / "fixed", "odd_one_out", 10, seeds)
    fixed_report = SweepReport([fixed])
    assert fixed_report.alpha == stats.ALPHA and fixed_report.tie_within is None
    assert fixed_report.statistics.tasks[0].pairs[0].separated  # p 0.028 < 0.05: a fixed sample separates

    sweep = make_task_sweep(tmp_path / "adaptive", "odd_one_out", 10, seeds)
    index = json.loads((sweep / "sweep.json").read_text())
    for job in index["jobs"]:  # as the real sweep's jobs record it
        job["overrides"].append(f"sweep.name={sweep.name}")
    (sweep / "sweep.json").write_text(json.dumps(index))
    rule = SeedRule(tie_within=2, max_seeds=4)
    look = judge(2, {f"mixer={m}": [0, 1, 2, 3] for m in seeds}, {f"mixer={m}": v for m, v in seeds.items()},
                 rule)
    (sweep / "until_separated.json").write_text(json.dumps(record(rule, [look], "python train.py -m ...")))
    report = SweepReport([sweep])
    per_look = json.loads((sweep / "until_separated.json").read_text())["rule"]["alpha_per_look"]
    assert report.alpha == per_look == pytest.approx(0.05 / 2) and report.tie_within == 2
    pair = report.statistics.tasks[0].pairs[0]
    assert not pair.separated and pair.verdict.startswith("not separated")  # as the sweeper left it
    report.write(sweep)
    data = json.loads((sweep / "report.json").read_text())
    assert data["alpha"] == per_look and data["tie_within"] == 2
    assert "per-look alpha" in data["alpha_source"]
    assert any(line.startswith(f"The adaptive sweep stopped ({look.stop}") for line in data["headline"])
    assert not any("Or let the sweeper add seeds" in line for line in data["headline"])
    # what to run next is a sweep of its own on seeds the adaptive one never used, not more seeds in it
    assert data["headline"][0].endswith("not separated at n=4 seeds (seeds to separate: 6).")
    assert not any("run more seeds" in line for line in data["headline"])
    fresh = next(line for line in data["headline"] if "report that sweep alone" in line)
    assert fresh.endswith("python train.py -m experiment=proxy_odd_one_out mixer=spectral,pooling "
                          f"seed=4,5,6,7,8,9 sweep.name={sweep.name}-fresh")
    assert f"alpha {per_look:g}: the adaptive sweep's per-look alpha" in (sweep / "report.md").read_text()
    # an explicit margin still wins over the sweeper's
    assert SweepReport([sweep], tie_within=5).tie_within == 5
