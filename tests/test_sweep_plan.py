"""Sweep bookkeeping without training: names, job directories, statuses, the index, set-aside attempts."""

from __future__ import annotations

import json

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from mixerlab.build import CONF_DIR, compose_config
from mixerlab.redact import REDACTED, redact_override, redacted_config
from mixerlab.run import RunDirectory
from mixerlab.sweep import (
    ENV_VAR,
    SweepIndex,
    SweepPlan,
    job_status,
    run_job,
    set_aside_failed_attempt,
    sweep_choice_resolver,
    sweep_name_resolver,
)


def test_sweep_name_depends_on_the_overrides_not_their_order():
    a = SweepPlan.from_overrides(["mixer=attention,pooling", "seed=0,1", "trainer.max_epochs=3"])
    b = SweepPlan.from_overrides(["trainer.max_epochs=3", "seed=1,0", "mixer=pooling,attention"])
    c = SweepPlan.from_overrides(["mixer=attention,pooling", "seed=0,1", "trainer.max_epochs=4"])
    d = SweepPlan.from_overrides(["mixer=attention,pooling", "seed=0,1", "trainer.max_epochs=3",
                                  "sweep.report=false"])
    assert a.name == b.name == d.name  # sweep.* steer the machinery, not the runs
    assert {j.dirname for j in a.jobs} == {j.dirname for j in b.jobs}  # so are its job directories
    assert a.name != c.name  # another budget is another sweep
    assert a.name.startswith("mixer+seed-")
    preset = SweepPlan.from_overrides(["experiment=deit_small", "mixer=a,b"])
    assert preset.name.startswith("deit_small.mixer-")
    named = SweepPlan.from_overrides(["seed=0,1", "sweep.name=ablation"], name="ablation")
    assert named.name == "ablation"


def test_jobs_expand_like_hydra_and_are_named_by_their_varied_choices():
    plan = SweepPlan.from_overrides(["mixer=attention,pooling", "+callbacks.x.at=1,2",
                                     "trainer.max_epochs=3"])
    assert plan.varied == ("callbacks.x.at", "mixer")
    assert [job.dirname for job in plan.jobs] == [  # Hydra's job order, keys in one canonical order
        "callbacks.x.at=1,mixer=attention", "callbacks.x.at=2,mixer=attention",
        "callbacks.x.at=1,mixer=pooling", "callbacks.x.at=2,mixer=pooling"]
    assert plan.jobs[1].overrides == ("mixer=attention", "+callbacks.x.at=2", "trainer.max_epochs=3")
    assert SweepPlan.from_overrides(["seed=1"]).jobs[0].dirname == "job"  # nothing varies


def test_unsafe_values_get_distinct_safe_directory_names():
    plan = SweepPlan.from_overrides(["data.root=/data/a/b,/data/a_b"])
    names = [job.dirname for job in plan.jobs]
    assert len(set(names)) == 2 and not any("/" in n for n in names)


def test_sweeper_params_of_a_preset_count_as_varied_and_the_command_line_wins():
    config = OmegaConf.create({
        "sweep": {"name": None},
        "hydra": {"sweeper": {"params": {"mixer": "attention,pooling", "seed": "0,1"}},
                  "overrides": {"task": ["seed=5", "trainer.max_epochs=1"]}},
    })
    plan = SweepPlan.from_config(config)
    assert plan.varied == ("mixer",)
    assert [job.dirname for job in plan.jobs] == ["mixer=attention", "mixer=pooling"]


def _write(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_job_status_is_read_from_the_run_directory(tmp_path):
    assert job_status(tmp_path / "never")[0] == "pending"
    _write(tmp_path / "started" / ".hydra" / "overrides.yaml", "[]")
    _write(tmp_path / "started" / "train.log")
    assert job_status(tmp_path / "started")[0] == "pending"  # Hydra's own files only
    _write(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert job_status(tmp_path / "killed")[0] == "incomplete"
    for name, summary, status in (
        ("done", {"status": "completed"}, "completed"),
        ("nan", {"status": "failed", "error": "NonFiniteError: non-finite loss"}, "failed"),
        ("ctrl-c", {"status": "failed", "error": "KeyboardInterrupt: "}, "interrupted"),
    ):
        _write(tmp_path / name / "summary.json", json.dumps(summary))
        assert job_status(tmp_path / name)[0] == status


def test_a_failed_attempt_is_set_aside_never_deleted(tmp_path):
    run = tmp_path / "mixer=attention"
    for name in ("summary.json", "metrics.csv", "train.log", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        _write(run / name, name)
    first = set_aside_failed_attempt(run)
    assert first == run / "failed-attempts" / "1"
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file()) == [
        ".hydra/config.yaml", "checkpoints/last.ckpt", "metrics.csv", "summary.json", "train.log"]
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "failed-attempts", "train.log"]  # copies
    _write(run / "summary.json", "again")
    assert set_aside_failed_attempt(run).name == "2"


def test_a_named_sweep_refuses_jobs_whose_settings_changed(tmp_path):
    index = SweepIndex(tmp_path)
    index.refresh(index.plan(SweepPlan.from_overrides(["seed=0,1", "trainer.max_epochs=1"], name="abl")))
    before = index.path.read_text()
    with pytest.raises(ValueError, match=r"seed=0: was .*max_epochs=1.*now .*max_epochs=2"):
        index.plan(SweepPlan.from_overrides(["seed=0,1", "trainer.max_epochs=2"], name="abl"))
    assert index.path.read_text() == before
    grown = index.plan(SweepPlan.from_overrides(["seed=0,1,2", "trainer.max_epochs=1"], name="abl"))
    assert [job["job"] for job in grown["jobs"]] == ["seed=0", "seed=1", "seed=2"]  # extending is fine


def test_resolvers_name_the_sweep_only_inside_one(monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # as in the process that parses a multirun
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert sweep_name_resolver() is None
    assert sweep_choice_resolver(["mixer=pooling", "seed=1"], "attention") == "attention"
    monkeypatch.setenv(ENV_VAR, json.dumps({"name": "abl", "varied": ["mixer", "seed"]}))
    assert sweep_name_resolver() == "abl"
    assert sweep_choice_resolver(["mixer=pooling", "seed=1", "trainer.max_epochs=1"]) == "mixer=pooling"
    compose_config([])  # a single run in a shell where the variable lingers: still no sweep
    assert sweep_name_resolver() is None and sweep_choice_resolver(["mixer=pooling"], "pooling") == "pooling"


def test_secrets_never_reach_saved_configs_or_the_index():
    cfg = OmegaConf.create({"logger": {"wandb": {"api_key": "s3cret", "project": "p"}},
                            "backbone": {"cls_token": True}, "auth_token": "t0ken"})
    saved = redacted_config(cfg)
    assert saved["logger"]["wandb"] == {"api_key": REDACTED, "project": "p"}
    assert saved["auth_token"] == REDACTED and saved["backbone"]["cls_token"] is True
    assert redact_override("+logger.wandb.api_key=s3cret") == f"+logger.wandb.api_key={REDACTED}"
    assert redact_override("mixer=attention") == "mixer=attention"


@pytest.fixture
def multirun_job(tmp_path, monkeypatch):
    """A composed config that looks like one job of a multirun, run directory under tmp_path."""
    previous = HydraConfig.instance().cfg
    cfg = compose_config(["seed=3"])
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "seed=3")
    HydraConfig.instance().set_config(cfg)
    yield cfg, tmp_path / "seed=3"
    HydraConfig.instance().cfg = previous


def test_in_a_multirun_an_exception_becomes_a_failed_summary_and_completed_jobs_are_skipped(multirun_job):
    cfg, run_dir = multirun_job

    def boom(_cfg):
        raise RuntimeError("disk full")

    summary = run_job(boom, cfg)
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: disk full"
    assert json.loads((run_dir / "summary.json").read_text()) == summary

    _write(run_dir / "summary.json", json.dumps({"status": "completed", "top1": 97.0}))
    assert run_job(boom, cfg) == {"status": "completed", "top1": 97.0}  # not run again

    def interrupted(_cfg):
        raise KeyboardInterrupt

    _write(run_dir / "summary.json", json.dumps({"status": "failed", "error": "x"}))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C stops the whole sweep
        run_job(interrupted, cfg)
    assert (run_dir / "failed-attempts" / "1" / "summary.json").is_file()


def test_an_interrupted_job_leaves_as_system_exit_so_no_launcher_records_it_as_a_result(multirun_job):
    """A requeue's SIGTERM that kills a loader worker first reaches the job as a RuntimeError. Hydra would
    store an Exception as the job's return value (submitit pickles that as the job's result before the
    requeued job runs); SystemExit passes through both, and the summary keeps "interrupted"."""
    cfg, run_dir = multirun_job

    def requeued(_cfg):
        RunDirectory(run_dir).write_summary({"status": "interrupted", "error": "RuntimeError: worker"})
        raise RuntimeError("DataLoader worker (pid 6475) is killed by signal: Terminated.")

    with pytest.raises(SystemExit, match="interrupted: RuntimeError: DataLoader worker") as stopped:
        run_job(requeued, cfg)
    assert not isinstance(stopped.value, Exception)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert job_status(run_dir)[0] == "interrupted"  # the next attempt resumes from the checkpoint


def test_the_sweep_and_the_report_do_not_import_each_other():
    """The report reads sweeps; the sweep knows nothing of the report (its Hydra callback joins the two)."""
    import subprocess
    import sys

    code = ("import sys, mixerlab.sweep; assert 'mixerlab.report' not in sys.modules, 'sweep imports it'; "
            "import mixerlab.report, mixerlab.sweep_callback")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_DIR.parent)
