"""scripts/bench_mixers.py: the cost-vs-tokens benchmark runs end to end and fits what it should."""

from __future__ import annotations

import csv
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixers.metaformer import RandomMixing
from scripts.bench_mixers import (
    VARIANTS,
    Point,
    build,
    discover_mixers,
    fit_exponent,
    measure,
    mixer_factories,
    parse_args,
    predicted,
    run,
)

REPO = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_csv_plot_and_headline_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/bench_mixers.py", "--smoke", "--threads", "1", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert headline == json.loads((tmp_path / "summary.json").read_text())
    mixers = sorted(p.stem for p in (REPO / "conf" / "mixer").glob("*.yaml")) + list(VARIANTS)
    assert discover_mixers() == mixers and {"attention_ssa", "attention_ssa_local"} <= set(mixers)
    assert sorted(headline["exponents"]) == sorted(mixers)
    assert headline["fibottention_sparse_over_attention"] > 0 and headline["hyena_toeplitz_over_fft"] > 0
    assert "hyena_fft" in mixers  # the FFT route of 2-D Hyena, benchmarked beside the shipped Toeplitz one
    rows = list(csv.DictReader((tmp_path / "mixers.csv").open()))
    assert len(rows) == len(mixers) * len(headline["tokens"])
    for r in rows:  # measured, or skipped with the mixer's reason (a grid it refuses); never failed
        assert (r["status"] == "ok" and float(r["seconds"]) > 0) or len(r["status"]) > len("skipped: "), r
    assert all(r["status"] == "ok" for r in rows if r["mixer"] in ("attention", "attention_ssa_local"))
    assert (tmp_path / "mixers.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "mixers.md").read_text().count("\n") == len(mixers) + 2  # header, rule, rows


def test_fitted_exponent_recovers_a_power_law():
    points = [Point("m", g, g * g, 1e-6 * (g * g) ** 1.5, None, "ok") for g in (8, 16, 32, 64)]
    assert fit_exponent(points, min_tokens=0) == pytest.approx(1.5)
    assert fit_exponent(points, min_tokens=10**6) is None


def test_points_predicted_over_budget_are_skipped(tmp_path):
    points = [Point("m", 8, 64, 1.0, 10.0, "ok"), Point("m", 16, 256, 4.0, 40.0, "ok")]
    assert predicted(points, 1024, "seconds") == pytest.approx(16.0)  # exponent 1 from the last two
    # memory below the noise floor counts as the floor: a noisy first point must not be squared up
    noisy = [Point("m", g, g * g, 1.0, mb, "ok") for g, mb in ((8, 11.9), (14, 2.3), (20, 4.9), (28, 7.6))]
    assert predicted(noisy, 1600, "peak_mb", floor=8.0) == pytest.approx(8.0 * 1600 / 784)
    args = parse_args(["--smoke", "--mixers", "identity", "--max-seconds", "0", "--out", str(tmp_path)])
    summary = run(args)
    assert summary["skipped"] == 1  # the first size is always measured, then nothing fits in 0 s


def test_a_grid_the_mixer_refuses_is_skipped_with_its_reason():
    args = parse_args(["--smoke", "--out", "unused"])
    factories = {"fixed16": functools.partial(RandomMixing, num_tokens=16)}  # weights fix 4x4 tokens
    ok, refused = (measure(Point("fixed16", g, g * g, None, None, "ok"), factories, args) for g in (4, 8))
    assert ok.status == "ok" and ok.seconds > 0
    assert refused.status.startswith("skipped: mixer.num_tokens=16 but the backbone gives 64 tokens")
    assert refused.seconds is None


def test_inference_timing_uses_the_fused_deployment_form_and_training_timing_the_branches():
    from mixers.ffnified import RepVGGDW

    ffnified = mixer_factories(["ffnified"], heads=2)["ffnified"]
    factories = {"ffnified": functools.partial(ffnified, kernel_size=7)}
    for flag, fused in (([], False), (["--inference"], True)):
        args = parse_args(["--smoke", "--mixers", "ffnified", "--out", "unused", *flag])
        module, x = build(factories, "ffnified", 4, args)
        assert module.training is not fused and x.requires_grad is not fused
        assert any(isinstance(m, RepVGGDW) for m in module.modules()) is not fused
        assert measure(Point("ffnified", 4, 16, None, None, "ok"), factories, args).seconds > 0
