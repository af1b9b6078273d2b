"""scripts/bench_render.py times two renderers side by side and says whether they draw the same bytes (no
timing is asserted)."""

from __future__ import annotations

import types

import numpy as np
import pytest

import data.digit_tasks as digit_tasks
from scripts import bench_render


def test_against_this_commit_the_renderers_agree_and_both_are_timed(capsys):
    result = bench_render.main(["--against", "HEAD", "--count", "6", "--rounds", "2", "--tasks", "marker"])
    figures = result["tasks"]["marker"]
    assert figures["same_bytes"] is True
    assert figures["this_us"] > 0 and figures["other_us"] > 0
    assert set(result["tasks"]) == {"marker"} and result["rounds"] == 2
    assert "same bytes: True" in capsys.readouterr().out


def test_a_renderer_that_draws_other_canvases_is_reported(monkeypatch):
    def shifted_render(task, bank, index, seed, size=32, grid_step=4):
        canvas, label = digit_tasks.render(task, bank, index, seed, size, grid_step)
        return np.roll(canvas, 1, axis=1), label

    other = types.SimpleNamespace(digit_banks=digit_tasks.digit_banks, render=shifted_render)
    monkeypatch.setattr(bench_render, "load_renderer", lambda rev, folder: other)
    result = bench_render.main(["--against", "HEAD", "--count", "4", "--rounds", "1", "--tasks", "sum_mod10"])
    assert result["tasks"]["sum_mod10"]["same_bytes"] is False


def test_an_unknown_commit_names_itself_and_what_to_give():
    with pytest.raises(SystemExit, match="--against no-such-rev: git cannot show data/digit_tasks.py"):
        bench_render.main(["--against", "no-such-rev", "--count", "1", "--rounds", "1"])
