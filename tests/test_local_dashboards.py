"""logger=tensorboard and logger=mlflow: a tiny sweep writes what each UI reads, grouped by sweep, with the
mixer and seed as parameters; the MLflow store survives jobs that start at once, and a resumed run logs on
into its own MLflow run."""

from __future__ import annotations

import csv
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIXERS = ("attention", "identity")


@pytest.fixture(scope="module")
def dashboard_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dashboards")
    command = [sys.executable, str(REPO / "train.py"), "-m", f"mixer={','.join(MIXERS)}", "seed=3",
               "logger=[csv,tensorboard,mlflow]", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
               "+trainer.limit_val_batches=1", "callbacks.progress.refresh_rate=0"]
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    (sweep,) = (cwd / "runs" / "sweeps").iterdir()
    return cwd, sweep


def _epoch_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [row for row in csv.DictReader(f) if row.get("val/top1")]


def test_tensorboard_shows_each_job_with_its_curves_and_parameters(dashboard_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, sweep = dashboard_sweep
    for mixer in MIXERS:
        run_dir = sweep / f"mixer={mixer}"
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        top1 = [round(e.value, 4) for e in events.Scalars("val/top1")]
        assert top1 == [round(float(row["val/top1"]), 4) for row in _epoch_rows(run_dir)] and len(top1) == 2
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = start.session_start_info.hparams
        assert hparams["mixer"].string_value == mixer
        assert hparams["seed"].number_value == 3
        assert hparams["sweep"].string_value == sweep.name
        assert hparams["job"].string_value == run_dir.name
        assert hparams["recipe.lr"].number_value > 0  # the full config beside the run's identity
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        assert "val/top1" in [m.name.tag for m in experiment.experiment.metric_infos]
        # no value logged at step 0 just to fill the HParams tab (Lightning's hp_metric)
        assert "hp_metric" not in events.Tags()["scalars"]


def test_mlflow_has_one_experiment_per_sweep_and_one_run_per_job(dashboard_sweep):
    from mlflow.tracking import MlflowClient

    cwd, sweep = dashboard_sweep
    client = MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep.name)
    assert experiment is not None
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(f"mixer={m}" for m in MIXERS)
    for name, run in runs.items():
        summary = json.loads((sweep / name / "summary.json").read_text())
        assert run.info.status == "FINISHED"
        assert (run.data.params["mixer"], run.data.params["seed"]) == (summary["mixer"], "3")
        assert (run.data.tags["mixer"], run.data.tags["sweep"]) == (summary["mixer"], sweep.name)
        assert run.data.metrics["val/top1"] == pytest.approx(summary["top1"], abs=0.01)
        assert (sweep / name / "mlflow_run_id").read_text().strip() == run.info.run_id


def _start_run(uri: str, run_dir: str, queue) -> None:
    from mixerlab.loggers import SweepMLflowLogger

    logger = SweepMLflowLogger(experiment_name="together", tracking_uri=uri, run_dir=run_dir,
                               run_params={"mixer": "pooling", "seed": int(run_dir[-1])})
    logger.log_hyperparams({"recipe": {"lr": 0.001}})
    queue.put(logger.run_id)


def test_jobs_that_start_at_once_share_a_fresh_store(tmp_path):
    """Two jobs of a parallel sweep creating the store and the experiment at the same moment both log."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    jobs = [context.Process(target=_start_run, args=(uri, str(tmp_path / f"run{i}"), queue)) for i in (0, 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(180)
    assert [job.exitcode for job in jobs] == [0, 0]
    ids = {queue.get(timeout=5), queue.get(timeout=5)}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "together"]
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == ids


def test_a_resumed_run_logs_into_its_own_mlflow_run(tmp_path):
    from mixerlab.loggers import SweepMLflowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = SweepMLflowLogger(experiment_name="resume", tracking_uri=uri, run_dir=str(tmp_path),
                              run_params={"mixer": "attention", "seed": 0})
    first.log_hyperparams({"seed": 0})
    first.log_metrics({"val/top1": 10.0}, step=1)
    again = SweepMLflowLogger(experiment_name="resume", tracking_uri=uri, run_dir=str(tmp_path),
                              run_params={"mixer": "attention", "seed": 0})
    again.log_hyperparams({"seed": 0})
    again.log_metrics({"val/top1": 20.0}, step=2)
    assert again.run_id == first.run_id
    history = again.experiment.get_metric_history(again.run_id, "val/top1")
    assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 20.0)]
