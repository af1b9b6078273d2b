"""logger=wandb for real, without a network: a sweep logs offline, one wandb run per job, no secret saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixerlab.build import compose_config
from mixerlab.loggers import choose_wandb_mode
from tests.wandb_records import history, read_records

REPO = Path(__file__).resolve().parents[1]
SECRET = "wandb-test-key-5f1c0ffee0ddba11ad5eed0123456789abcdef0"


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    # A host that never resolves (RFC 6761): the no-network path, whatever network the machine has.
    env.update(WANDB_API_KEY=SECRET, WANDB_BASE_URL="https://api.wandb.invalid", NETRC=str(cwd / "netrc"),
               WANDB_CONFIG_DIR=str(cwd / "config"), WANDB_CACHE_DIR=str(cwd / "cache"),
               WANDB_DATA_DIR=str(cwd / "data"))
    command = [sys.executable, str(REPO / "train.py"), "-m", "backbone.depth=1,2", "logger=[csv,wandb]",
               "logger.wandb.probe_timeout_s=1", "trainer.max_epochs=2", "+trainer.limit_train_batches=2",
               "+trainer.limit_val_batches=1", "callbacks.progress.refresh_rate=0"]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    (sweep,) = (cwd / "runs" / "sweeps").iterdir()
    return cwd, sweep, proc.stdout + proc.stderr, seconds


def test_without_network_wandb_goes_offline_and_says_how_to_sync(wandb_sweep):
    _, sweep, output, _ = wandb_sweep
    assert output.count("wandb: offline mode (api.wandb.invalid:443 not reachable within 1 s)") == 2
    for depth in (1, 2):
        (run,) = (sweep / f"backbone.depth={depth}" / "wandb").glob("offline-run-*")
        assert f"upload it later with: wandb sync {run}" in output


def test_each_job_is_its_own_wandb_run_grouped_by_sweep_with_its_metrics(wandb_sweep):
    _, sweep, _, _ = wandb_sweep
    ids = set()
    for depth in (1, 2):
        run_dir = sweep / f"backbone.depth={depth}"
        (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # one wandb run per job: finished
        records = read_records(run_file)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        ids.add(run.run_id)
        assert (run.run_group, run.job_type, run.display_name) == (
            sweep.name, f"backbone.depth={depth}", f"backbone.depth={depth}")
        config = {item.key: json.loads(item.value_json) for r in records
                  if r.WhichOneof("record_type") == "config" for item in r.config.update}
        config.update({item.key: json.loads(item.value_json) for item in run.config.update})
        assert config["backbone"]["depth"] == depth and config["seed"] == 0  # the full resolved config
        assert config["mixer"]["_target_"] == "mixers.attention.Attention"
        rows = [row for row in history(records) if "val/top1" in row]
        csv_rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
        assert len(rows) == len(csv_rows) == 2  # both loggers got every epoch
        assert {"train/loss", "train/images_per_s", "epoch"} <= set(rows[0])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert float(rows[-1]["val/top1"]) == pytest.approx(summary["top1"], abs=0.01)
        (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
        assert exit_record.exit_code == 0
    assert len(ids) == 2


def test_no_secret_is_written_anywhere(wandb_sweep):
    cwd, _, output, _ = wandb_sweep
    assert SECRET not in output
    leaks = [p for p in cwd.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_an_offline_sweep_never_hangs_on_the_network(wandb_sweep):
    _, _, _, seconds = wandb_sweep
    assert seconds < 300  # two tiny jobs; a network wait would be minutes (wandb's own init timeout is 90 s)


def test_wandb_mode_auto_goes_offline_without_a_key_or_a_server(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` either
    assert choose_wandb_mode("auto") == ("offline", "no API key (set WANDB_API_KEY or run `wandb login`)")
    monkeypatch.setenv("WANDB_API_KEY", "x")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    mode, why = choose_wandb_mode("auto", timeout_s=1)
    assert (mode, why) == ("offline", "127.0.0.1:9 not reachable within 1 s")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode("auto")[0] == "disabled"
    assert choose_wandb_mode("offline")[0] == "offline"
    with pytest.raises(ValueError, match="logger.wandb.mode='cloud'"):
        choose_wandb_mode("cloud")


def test_loggers_combine_as_a_list_or_the_many_preset():
    for choice in ("[csv,wandb]", "many"):
        cfg = compose_config([f"logger={choice}"])
        assert sorted(cfg.logger) == ["csv", "wandb"]
        assert cfg.logger.wandb._target_ == "mixerlab.loggers.wandb_logger"
    assert sorted(compose_config([]).logger) == ["csv"]  # metrics.csv by default
