"""``hydra/sweeper=until_separated``: seeds until every adjacent pair of the ranking is separated.

On a cheap objective whose truth is known (a launcher whose jobs return draws from known normal
distributions): clearly different configurations are separated at the first look, identical ones run to the
cap and are reported not separated, seeds go only to the open pair, and over many sweeps of identical
configurations the rule calls a pair separated at most about alpha of the time despite its repeated looks.
Then a real tiny sweep through train.py, with the basic launcher and with local_parallel, and its re-run,
which launches nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.mixerlab_sweeps.until_separated import UntilSeparatedSweeper, _look_line, longest_first
from mixerlab.adaptive_seeds import RECORD_NAME, SeedRule, judge, pair_state
from tests.conftest import REPO, every_json_parses, kill_sweep_when
from tests.faults import ENV as FAULTS_ENV


class NormalLauncher:
    """Each job returns a draw from N(means[mixer], sd), fixed by (mixer, seed, replicate)."""

    def __init__(self, means: dict[str, float], sd: float, replicate: int = 0) -> None:
        self.means, self.sd, self.replicate = means, sd, replicate
        self.launched: list[list[str]] = []

    def launch(self, batch, initial_job_idx):
        out = []
        for overrides in batch:
            choice = dict(o.split("=", 1) for o in overrides)
            key = f"{choice['mixer']}|{choice['seed']}|{self.replicate}".encode()
            value = np.random.default_rng(zlib.crc32(key)).normal(self.means[choice["mixer"]], self.sd)
            out.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=value))
        self.launched += [list(o) for o in batch]
        return out


def fake_sweep(sweep_dir: Path, mixers, launcher, settings: dict, **config) -> dict:
    """The sweeper over ``mixer=<mixers>`` with a launcher that draws each job's value (no config to
    compose); ``config`` adds keys to the sweep's config (``data``). Returns until_separated.json."""
    sweep = "mixer=" + ",".join(mixers)
    composed = OmegaConf.create({
        "seed": 0, "sweep": {"name": None}, **config,
        "hydra": {"sweep": {"dir": str(sweep_dir)}, "sweeper": {"params": None, **settings},
                  "overrides": {"task": [sweep]}}})
    sweeper = UntilSeparatedSweeper(**settings)
    sweeper.config, sweeper.hydra_context = composed, SimpleNamespace(config_loader=None)
    sweeper.launcher = launcher
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.sweep([sweep])
    return json.loads((sweep_dir / RECORD_NAME).read_text())


def run_sweeper(tmp_path: Path, means: dict[str, float], sd: float, replicate: int = 0, **settings):
    launcher = NormalLauncher(means, sd, replicate)
    record = fake_sweep(tmp_path / f"sweep{replicate}", means, launcher,
                        {"initial_seeds": 3, "seed_step": 1, "max_seeds": 10, **settings})
    return record, launcher.launched


def seeds_of(record: dict) -> dict[str, int]:
    return {label: len(entry["seeds"]) for label, entry in record["looks"][-1]["configs"].items()}


def test_clearly_different_configurations_are_separated_at_the_first_look(tmp_path):
    record, launched = run_sweeper(tmp_path, {"a": 10.0, "b": 50.0, "c": 90.0}, sd=2.0)
    assert record["stopped"] == "separated" and len(record["looks"]) == 1
    assert record["ranking"] == ["mixer=c", "mixer=b", "mixer=a"]
    assert record["verdicts"] == ["mixer=c ahead", "mixer=b ahead"]
    assert len(launched) == 9 and seeds_of(record) == {"mixer=a": 3, "mixer=b": 3, "mixer=c": 3}
    assert record["rule"]["max_looks"] == 8 and record["rule"]["alpha_per_look"] == pytest.approx(0.05 / 8)
    index = json.loads((tmp_path / "sweep0" / "sweep.json").read_text())
    assert sorted(job["job"] for job in index["jobs"]) == sorted(
        f"mixer={m},seed={s}" for m in "abc" for s in range(3))


def test_identical_configurations_run_to_the_cap_and_are_reported_not_separated(tmp_path):
    record, launched = run_sweeper(tmp_path, {"a": 50.0, "b": 50.0}, sd=5.0)
    assert record["stopped"] == "cap" and "max_seeds=10" in record["reason"]
    assert len(record["looks"]) == 8 and record["alpha_spent"] == pytest.approx(0.05)
    assert seeds_of(record) == {"mixer=a": 10, "mixer=b": 10} and len(launched) == 20
    assert record["verdicts"][0].startswith("not separated at n = 10, 10")
    looks = record["looks"]
    assert [sum(len(c["seeds"]) for c in look["configs"].values()) for look in looks] == list(range(6, 21, 2))


def test_seeds_go_only_to_the_open_pair_and_nobody_loses_seeds(tmp_path):
    record, _ = run_sweeper(tmp_path, {"a": 90.0, "b": 50.0, "c": 50.0}, sd=3.0, seed_step=2, max_seeds=7)
    assert seeds_of(record) == {"mixer=a": 3, "mixer=b": 7, "mixer=c": 7}
    assert record["stopped"] == "cap" and record["rule"]["max_looks"] == 3
    for earlier, later in zip(record["looks"], record["looks"][1:], strict=False):
        for label, entry in earlier["configs"].items():
            assert later["configs"][label]["seeds"][: len(entry["seeds"])] == entry["seeds"]
    assert record["looks"][-1]["pairs"][0]["separated"]  # a ahead of the better of b and c


def test_repeated_looks_at_identical_configurations_keep_false_separations_near_alpha(tmp_path):
    """Without the split of alpha over looks, stopping at the first p < 0.05 over 8 looks calls about one
    sweep in six separated (STATISTICS.md); with it, at most alpha = 5% in expectation."""
    sweeps = 60
    stops = [run_sweeper(tmp_path, {"a": 0.0, "b": 0.0}, sd=1.0, replicate=r)[0]["stopped"]
             for r in range(sweeps)]
    separated = stops.count("separated")
    assert separated <= 6, f"{separated} of {sweeps} sweeps of identical configurations called separated"


def test_with_tie_within_two_configurations_at_chance_are_tied_early_and_a_real_gap_is_not(tmp_path):
    record, launched = run_sweeper(tmp_path, {"a": 90.0, "b": 10.0, "c": 10.0}, sd=0.3, tie_within=2)
    assert record["stopped"] == "separated or tied" and "tied within ±2 (1)" in record["reason"]
    assert record["verdicts"][0] == "mixer=a ahead"
    assert record["verdicts"][1].startswith("tied within ±2 at n = ")
    assert seeds_of(record)["mixer=a"] == 3 and max(seeds_of(record).values()) < 10
    pair = record["looks"][-1]["pairs"][1]
    assert pair["tied"] and not pair["separated"] and pair["tie_p_value"] <= record["rule"]["alpha_per_look"]
    assert "tied instead when two one-sided Welch tests" in record["rule"]["description"]
    # the shipped default is off: the same pair runs to the cap, as without the setting
    off, _ = run_sweeper(tmp_path / "off", {"b": 10.0, "c": 10.0}, sd=0.3)
    assert off["stopped"] == "cap" and off["looks"][-1]["pairs"][0]["tied"] is False


def test_configurations_a_margin_apart_are_rarely_called_tied(tmp_path):
    """The true difference sits on the margin's edge: over many sweeps the rule calls the pair tied at
    most about alpha of the time, despite its repeated looks."""
    sweeps = 40
    stops = [run_sweeper(tmp_path, {"a": 1.0, "b": 0.0}, sd=1.0, replicate=r, tie_within=1.0)[0]
             for r in range(sweeps)]
    tied = sum(record["looks"][-1]["pairs"][0]["tied"] for record in stops)
    assert tied <= 4, f"{tied} of {sweeps} sweeps tied a pair one margin apart"


class TableLauncher:
    """Each job returns ``table[mixer][seed]``."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def launch(self, batch, initial_job_idx):
        returns = []
        for overrides in batch:
            choice = dict(o.split("=", 1) for o in overrides)
            value = self.table[choice["mixer"]][int(choice["seed"])]
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                     _return_value=value))
        return returns


@pytest.mark.parametrize("learned_above", ["auto", 30.0, None])
def test_a_configuration_whose_seeds_split_around_learning_is_named_seed_unstable(tmp_path, learned_above):
    """Seeds of `a` alternate between chance and far above it (10 classes: auto = 10 + 10% of 90 = 19)."""
    table = {"a": [10.0 + (70.0 if s % 2 else 0.0) + 0.1 * s for s in range(10)],
             "b": [50.0 + 0.3 * s for s in range(10)]}
    settings = {"initial_seeds": 3, "seed_step": 1, "max_seeds": 4, "learned_above": learned_above}
    record = fake_sweep(tmp_path / "sweep", table, TableLauncher(table), settings, data={"num_classes": 10})
    first, last = record["looks"][0], record["looks"][-1]
    if learned_above is None:
        assert first["learned_above"] is None and first["unstable"] == {}
        assert "seed-unstable" not in record["reason"]
        return
    assert first["learned_above"] == pytest.approx(19.0 if learned_above == "auto" else 30.0)
    assert first["unstable"] == {"mixer=a": "learned on 1 of 3 seeds"}  # 10.0, 80.1, 10.2
    assert first["configs"]["mixer=b"]["learned"] == 3 and "mixer=b" not in first["unstable"]
    assert last["unstable"] == {"mixer=a": "learned on 2 of 4 seeds"}
    assert record["stopped"] == "cap"
    assert "(seed-unstable: mixer=a learned on 2 of 4 seeds)" in record["verdicts"][0]
    assert "seed-unstable" in record["reason"] and "learn rates" in record["reason"]
    if learned_above == "auto":
        assert first["learned_band"] == pytest.approx(9.0)
        assert "at or below 19 and above 28" in record["reason"]


def test_one_mode_across_the_learned_threshold_is_not_seed_unstable(tmp_path):
    """Pooling on odd one out: five seeds 15.6-21.1 around auto's 19, every one clear of chance. One of them
    above 19 does not make two modes: that needs a seed above 19 + 9 (10% of 100 - chance)."""
    table = {"pooling": [16.4, 15.6, 21.1, 18.0, 17.6], "identity": [12.3, 8.2, 9.7, 12.75, 9.85]}
    settings = {"initial_seeds": 5, "seed_step": 1, "max_seeds": 5}
    record = fake_sweep(tmp_path / "sweep", table, TableLauncher(table), settings, data={"num_classes": 10})
    (look,) = record["looks"]
    assert look["configs"]["mixer=pooling"]["learned"] == 1 and look["unstable"] == {}


class TimedLauncher(TableLauncher):
    """TableLauncher whose jobs also leave summary.json in their run directory, with a wall time per mixer
    (as train.py does); ``order`` records the mixers of each launch in the order given."""

    def __init__(self, table: dict[str, list[float]], walls: dict[str, float], sweep_dir: Path) -> None:
        super().__init__(table)
        self.walls, self.sweep_dir, self.order = walls, sweep_dir, []

    def launch(self, batch, initial_job_idx):
        returns = super().launch(batch, initial_job_idx)
        self.order.append([dict(o.split("=", 1) for o in overrides)["mixer"] for overrides in batch])
        for overrides, result in zip(batch, returns, strict=True):
            choice = dict(o.split("=", 1) for o in overrides)
            run = self.sweep_dir / f"mixer={choice['mixer']},seed={choice['seed']}"
            run.mkdir(parents=True, exist_ok=True)
            (run / "summary.json").write_text(json.dumps({
                "status": "completed", "top1": result.return_value, "wall_s": self.walls[choice["mixer"]]}))
        return returns


def test_a_look_starts_the_configurations_whose_jobs_took_longest_first(tmp_path):
    """Look 1 runs in the sweep's order; later looks put the slow configurations first, so that side-by-side
    jobs end a look on short ones (identity 191 s, spectral 319 s on odd one out)."""
    table = {m: [50.0 + 3.0 * ((s * 7 + i) % 5) for s in range(10)]  # equal means: every pair stays open
             for i, m in enumerate(("identity", "spectral", "pooling"))}
    walls = {"identity": 191.0, "spectral": 319.0, "pooling": 225.0}
    launcher = TimedLauncher(table, walls, tmp_path / "sweep")
    settings = {"initial_seeds": 2, "seed_step": 1, "max_seeds": 4, "learned_above": None}
    record = fake_sweep(tmp_path / "sweep", table, launcher, settings)
    assert launcher.order[0] == ["identity", "identity", "spectral", "spectral", "pooling", "pooling"]
    assert launcher.order[1:] == [["spectral", "pooling", "identity"]] * 2 and record["stopped"] == "cap"
    assert longest_first([("a", [], None), ("b", [], None)], {}) == [("a", [], None), ("b", [], None)]


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match=r"hydra.sweeper.max_seeds=2 is below hydra.sweeper.initial_seeds=3"):
        SeedRule(initial_seeds=3, max_seeds=2)
    with pytest.raises(ValueError, match="hydra.sweeper.seed_step"):
        SeedRule(seed_step=0)
    with pytest.raises(ValueError, match="hydra.sweeper.mode"):
        SeedRule(mode="best")
    with pytest.raises(ValueError, match="hydra.sweeper.alpha"):
        SeedRule(alpha=5)
    with pytest.raises(ValueError, match="hydra.sweeper.learned_above='half'"):
        SeedRule(learned_above="half")
    for bad in (0, -1.0, "two", True):
        with pytest.raises(ValueError, match=rf"hydra.sweeper.tie_within={bad!r}: null \(off\) or a"):
            SeedRule(tie_within=bad)


@pytest.mark.parametrize(("overrides", "message"), [
    (["hydra.sweeper.max_seeds=2"], "hydra.sweeper.max_seeds=2 is below hydra.sweeper.initial_seeds=3"),
    (["seed=0,1"], "seed=0,1: hydra/sweeper=until_separated picks the seeds itself"),
    (["hydra.sweeper.seed_key=nope"], "hydra.sweeper.seed_key='nope': the config has no such key"),
])
def test_a_bad_command_stops_before_any_job_naming_the_key(tmp_path, overrides, message):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", "mixer=identity,attention",
                           "hydra/sweeper=until_separated", *overrides], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
    assert not list(tmp_path.glob("runs/sweeps/*/mixer=*")), "a job ran"


# ---------------------------------------------------------------------------------------------- real sweeps
TINY = ("-m", "mixer=identity,attention", "hydra/sweeper=until_separated", "hydra.sweeper.initial_seeds=2",
        "hydra.sweeper.max_seeds=3", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "callbacks.progress.refresh_rate=0")


def _train(cwd: Path, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [
    [], ["hydra/launcher=local_parallel", "hydra.launcher.threads_per_job=1",
         "hydra.sweeper.tie_within=100"]],
                         ids=["basic", "local_parallel-tie_within"])
def test_a_real_tiny_sweep_records_its_looks_and_a_rerun_launches_nothing(tmp_path, launcher):
    output = _train(tmp_path, *launcher)
    (sweep_dir,) = (tmp_path / "runs" / "sweeps").iterdir()
    record = json.loads((sweep_dir / RECORD_NAME).read_text())
    last = record["looks"][-1]["configs"]
    runs = {f"{label},seed={seed}" for label, entry in last.items() for seed in entry["seeds"]}
    if launcher:  # a margin of 100 top-1 points ties any pair it does not separate: one look settles it
        assert record["stopped"] in ("separated", "separated or tied") and len(record["looks"]) == 1
        assert len(runs) == 4 and record["rule"]["tie_within"] == 100
        # the sweep's own report calls the same pairs tied as the sweeper did
        assert json.loads((sweep_dir / "report.json").read_text())["tie_within"] == 100
    else:
        assert record["stopped"] in ("separated", "cap") and len(runs) in (4, 6)
    assert record["reason"] and {"mixer=identity,seed=0", "mixer=attention,seed=1"} <= runs
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["varied"] == ["mixer", "seed"]
    assert {job["job"]: job["status"] for job in index["jobs"]} == dict.fromkeys(runs, "completed")
    for run in runs:
        assert json.loads((sweep_dir / run / "summary.json").read_text())["status"] == "completed"
    assert f"report: {sweep_dir / 'report.html'}" in output

    again = _train(tmp_path, *launcher)
    assert again.count("[until_separated] skipped (completed before)") == len(runs)
    assert "Launching" not in again and "[local_parallel] start" not in again
    assert json.loads((sweep_dir / RECORD_NAME).read_text())["looks"] == record["looks"]


# the first look's four jobs, run in this order: identity seeds 0 and 1, then attention seeds 0 and 1, which
# pauses at the start of its second epoch (its first epoch's checkpoint written) while the faults are armed
KILLABLE = ("-m", "mixer=identity,attention", "hydra/sweeper=until_separated",
            "hydra.sweeper.initial_seeds=2", "hydra.sweeper.max_seeds=2", "trainer.max_epochs=2",
            "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
            "callbacks.progress.refresh_rate=0", "sweep.report=false",
            "+callbacks.pause._target_=tests.faults.PauseAtEpoch", "+callbacks.pause.epoch=1",
            "+callbacks.pause.only_in='mixer=attention,seed=0'")


@pytest.mark.slow
def test_a_sweep_killed_mid_job_then_run_again_skips_the_finished_jobs_and_completes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    cmd = [sys.executable, str(REPO / "train.py"), *KILLABLE]
    paused = tmp_path / "paused"
    kill_sweep_when(cmd, tmp_path, {**env, FAULTS_ENV: str(paused)}, paused.exists)
    (sweep_dir,) = (tmp_path / "runs" / "sweeps").iterdir()
    every_json_parses(tmp_path)
    finished = {p.parent.name: p.read_bytes() for p in sweep_dir.glob("*/summary.json")}
    assert set(finished) == {"mixer=identity,seed=0", "mixer=identity,seed=1"}
    assert (sweep_dir / "mixer=attention,seed=0" / "checkpoints" / "last.ckpt").is_file()

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert again.stdout.count("[until_separated] skipped (completed before)") == 2
    assert {job: (sweep_dir / job / "summary.json").read_bytes() for job in finished} == finished  # untouched
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    assert len(summaries) == 4 and {s["status"] for s in summaries.values()} == {"completed"}
    assert summaries["mixer=attention,seed=0"]["resumed_from_step"] == 2
    assert "resumed_from_step" not in summaries["mixer=attention,seed=1"]
    record = json.loads((sweep_dir / RECORD_NAME).read_text())
    assert len(record["looks"]) == 1 and record["stopped"] in ("separated", "cap")
    every_json_parses(tmp_path)


def test_a_pairs_state_reads_the_same_in_the_console_line_and_the_report_and_from_an_older_record():
    rule = SeedRule(tie_within=2, max_seeds=4)
    tied = judge(2, {"mixer=a": [0, 1, 2, 3], "mixer=b": [0, 1, 2, 3]},
                 {"mixer=a": [97.0, 97.1, 96.9, 97.0], "mixer=b": [97.05, 97.0, 96.95, 97.1]}, rule)
    pair = tied.pairs[0]
    assert pair["tied"] and not pair["separated"]
    assert pair_state(pair) == "tied"
    assert pair_state(pair, tie_p=True) == f"tied (TOST p {pair['tie_p_value']:.3g})"
    assert f"p {pair['p_value']:.3g} tied (TOST p " in _look_line(tied, rule)
    assert pair_state({"separated": True, "tied": False}) == "separated"
    assert pair_state({"p_value": 0.3}) == "open"  # a record written before ties existed
    assert pair_state({"tied": True}, tie_p=True) == "tied"  # no TOST p recorded: nothing to show
