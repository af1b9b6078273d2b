"""Exact resume with mixer state: a run of a stateful mixer SIGKILLed between checkpoints and re-run ends
with the same weights digest -- centroids, random features and their step counter included -- as a run
that was never interrupted."""

from __future__ import annotations

import signal

import torch

from tests.conftest import run_train

# Both stateful mixers in one 2-layer model (a schedule puts Performer in layer 0, routing in layer 1);
# 8 steps of 32 images, a checkpoint every 3 steps; killed before step 5 runs, so the resumed process
# starts from step 3. Performer redraws every 2 training forwards: at steps 2 (before the checkpoint),
# 4 and 6 (after the resume). Routing initialises its centroids at step 0 and EMA-updates them after.
PERFORMER = "{_target_:mixers.performer.Performer,_partial_:true,num_heads:2,redraw_interval:2}"
RUN = (
    "trainer.max_epochs=1",
    "trainer.max_steps=8",
    "data.batch_size=32",
    "backbone.depth=2",
    "mixer=routing",
    f"backbone.schedule=[{{layers:1,mixer:{PERFORMER}}}]",
    "callbacks.checkpoint.every_n_steps=3",
    "~callbacks.progress",
    "+trainer.enable_progress_bar=false",
)
ENV = {"OMP_NUM_THREADS": "1"}


def last_checkpoint(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_a_killed_run_of_stateful_mixers_resumes_to_the_same_weights(tmp_path):
    overrides = RUN
    _, reference = run_train(tmp_path / "uninterrupted", *overrides, env=ENV)
    run_dir = tmp_path / "resumed"
    kill = ("+callbacks.kill._target_=tests.faults.KillAt", "+callbacks.kill.step=5")
    proc, _ = run_train(run_dir, *overrides, *kill, check=False, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert last_checkpoint(run_dir)["global_step"] == 3
    _, resumed = run_train(run_dir, *overrides, env=ENV)

    assert resumed["steps"] == reference["steps"] == 8
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert resumed["train_loss"] == reference["train_loss"]
    ours, theirs = last_checkpoint(run_dir), last_checkpoint(tmp_path / "uninterrupted")
    state = [k for k in ours["state_dict"] if k.endswith((".means", ".initted", ".projection", ".step"))]
    assert len(state) == 4, "the mixers' buffers are in the checkpoint"
    for key in state:
        assert torch.equal(ours["state_dict"][key], theirs["state_dict"][key]), key
    assert int(ours["state_dict"]["backbone.blocks.0.mixer.step"]) == 8  # Performer
    assert bool(ours["state_dict"]["backbone.blocks.1.mixer.initted"])  # routing
    assert ours["history"][0]["train/aux_loss"] == theirs["history"][0]["train/aux_loss"] > 0
