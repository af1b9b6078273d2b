"""scripts/bench_train.py runs end to end at tiny sizes and reports its headline figures (no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_smoke_bench_prints_headline_json_on_the_last_line(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--smoke", "--compare-timm"]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    # ours and timm's counterpart are the same architecture: same parameter count
    assert report["params"] == report["timm_params"] > 0
    assert report["timm_model"].startswith("timm VisionTransformer")
    for side in ("ours", "timm"):
        assert report[side]["images_per_s"] > 0
        assert len(report[side]["images_per_s_rounds"]) == 2
    assert report["ratio_ours_timm"] > 0
    assert report["flops_per_step"] > 0 and report["achieved_tflops"] >= 0
    assert report["mfu"] is None  # CPU: no accelerator peak to divide by
    lightning = report["lightning"]
    assert lightning["plain_images_per_s"] > 0 and lightning["lightning_images_per_s"] > 0
    assert isinstance(lightning["overhead_pct"], float)
    assert report["versions"]["torch"] and report["machine"]["cores"] >= 1


def test_deit_small_counterpart_is_timms_deit_small_with_our_parameter_count():
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_train import timm_counterpart

    from mixerlab.build import build_backbone, compose_config
    from mixerlab.costs import count_parameters

    cfg = compose_config(["backbone=vit_small", "data=synthetic"])
    timm_model, name = timm_counterpart(cfg)
    assert name == "deit_small_patch16_224"
    assert count_parameters(timm_model) == count_parameters(build_backbone(cfg)) == 22_050_664


def test_full_run_smoke_prints_the_bare_step_and_the_full_run_side_by_side(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--smoke", "--full-run",
           "callbacks.progress.refresh_rate=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bare step" in proc.stdout and "full run" in proc.stdout and "full / bare" in proc.stdout
    full = json.loads(proc.stdout.strip().splitlines()[-1])["full_run"]
    assert full["bare_images_per_s"] > 0 and full["full_images_per_s"] > 0 and full["ratio"] > 0
    assert len(full["ratio_rounds"]) == len(full["full_images_per_s_rounds"]) == 2
    assert full["bare_steps_per_round"] == 256 // 32  # by default the run's epoch: 256 samples, batch 32
    assert "(median of 2 rounds x 8 steps)" in proc.stdout
    assert full["same_weights_every_round"]  # each round a fresh run of the same seed


def test_precision_smoke_times_the_same_model_in_two_precisions_side_by_side(tmp_path):
    cmd = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--smoke", "--compare-precision",
           "bf16-mixed"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bf16-mixed / 32-true" in proc.stdout
    compared = json.loads(proc.stdout.strip().splitlines()[-1])["precision_compare"]
    assert compared["configured"] == "32-true" and compared["other"] == "bf16-mixed"
    assert compared["configured_images_per_s"] > 0 and compared["other_images_per_s"] > 0
    assert len(compared["ratio_rounds"]) == 2 and compared["ratio"] > 0
