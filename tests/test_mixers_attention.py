"""Attention with SSA (stochastically subsampled self-attention): subsets, windows, eval, state, resume."""

from __future__ import annotations

import math
import signal
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.attention import Attention
from mixers.contract import TokenLayout, set_dense
from tests.conftest import run_train


def make(layout: TokenLayout, local_bias: bool, factor: float = 3, **kw) -> Attention:
    torch.manual_seed(0)
    return Attention(16, layout, num_heads=2, ssa={"factor": factor, "local_bias": local_bias}, **kw)


def heads(m: Attention, x: torch.Tensor):
    B, N, C = x.shape
    return m.qkv(x).reshape(B, N, 3, 2, C // 2).permute(2, 0, 3, 1, 4).unbind(0)


def noise_of(m: Attention, step: int, B: int, n: int) -> torch.Tensor:
    """The draws a step made, from the documented seed (seed, layer index, step)."""
    seed = int(np.random.SeedSequence([m.seed, m.layer_index, step]).generate_state(1)[0])
    return torch.rand(B, n, generator=torch.Generator().manual_seed(seed))


def masked_reference(m: Attention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Naive attention where query i sees key j iff allowed[b, i, j]; (B, N, N) mask."""
    q, k, v = heads(m, x)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    y = logits.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v
    return m.proj(y.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("prefix", [0, 1])
def test_unbiased_ssa_gives_every_query_the_same_random_subset_of_n_over_s_keys(prefix):
    layout = TokenLayout((4, 5), prefix)
    m = make(layout, local_bias=False).train()
    x = torch.randn(2, layout.num_tokens, 16)
    out = m(x)
    keep = noise_of(m, 0, 2, 20).argsort(-1)[:, : math.ceil(20 / 3)]  # 7 of the 20 patch keys
    assert keep.shape == (2, 7) and not torch.equal(keep[0], keep[1]), "per-sample subsets"
    allowed = torch.zeros(2, layout.num_tokens, layout.num_tokens, dtype=torch.bool)
    allowed[:, :, :prefix] = True  # CLS kept in every subset
    for b in range(2):
        allowed[b, :, prefix + keep[b]] = True  # the same keys for every query
    assert torch.allclose(out, masked_reference(m, x, allowed), atol=1e-5)
    assert int(m.ssa_step) == 1


@pytest.mark.parametrize("prefix", [0, 1])
def test_local_bias_ssa_is_block_diagonal_attention_in_a_locality_biased_order(prefix):
    layout = TokenLayout((4, 5), prefix)
    m = make(layout, local_bias=True).train()
    x = torch.randn(2, layout.num_tokens, 16)
    out = m(x)
    window = math.ceil(20 / 3)
    order = (torch.arange(20) + window * noise_of(m, 0, 2, 20)).argsort(-1)
    assert (order - torch.arange(20)).abs().max() < 2 * window, "tokens move about one window"
    window_of = torch.empty(2, 20, dtype=torch.long)
    window_of.scatter_(1, order, torch.arange(20).div(window, rounding_mode="floor").expand(2, -1))
    allowed = torch.ones(2, layout.num_tokens, layout.num_tokens, dtype=torch.bool)  # CLS row: dense
    allowed[:, prefix:, prefix:] = window_of[:, :, None] == window_of[:, None, :]
    assert torch.allclose(out, masked_reference(m, x, allowed), atol=1e-5)


def test_eval_and_set_dense_are_exactly_dense_sdpa_attention():
    layout = TokenLayout((4, 4), 1)
    m, dense = make(layout, local_bias=True), Attention(16, layout, num_heads=2)
    dense.load_state_dict({k: v for k, v in m.state_dict().items() if k != "ssa_step"})
    x = torch.randn(2, 17, 16)
    q, k, v = heads(m, x)
    sdpa = m.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
    assert torch.equal(m.eval()(x), sdpa) and torch.equal(dense.eval()(x), sdpa)
    m.train()
    assert not torch.allclose(m(x), sdpa)
    assert set_dense(torch.nn.Sequential(m), True) == 1
    assert torch.equal(m(x), sdpa) and int(m.ssa_step) == 1, "dense: no draws, counter still"


def test_the_step_counter_is_state_and_replays_the_same_subsets():
    layout = TokenLayout((4, 4), 0)
    m, x = make(layout, local_bias=False), torch.randn(2, 16, 16)
    first = [m(x) for _ in range(3)]
    assert "ssa_step" in m.state_dict() and int(m.state_dict()["ssa_step"]) == 3
    assert not torch.allclose(first[0], first[1]), "a new subset each step"
    other = make(layout, local_bias=False)
    other.load_state_dict({**m.state_dict(), "ssa_step": torch.tensor([1])})
    assert torch.equal(other(x), first[1])
    assert not torch.allclose(make(layout, False, layer_index=1)(x), first[0]), "layers draw apart"
    assert "ssa_step" not in Attention(16, layout, num_heads=2).state_dict(), "dense state unchanged"


@pytest.mark.parametrize("value", ["{factor:0.5}", "{local_bias:true}", "{factor:4,window:3}"])
def test_bad_ssa_options_are_named(value):
    with pytest.raises(ConfigError, match=r"mixer\.ssa"):
        build_backbone(compose_config([f"mixer.ssa={value}"]))


def test_dense_finetune_needs_a_train_time_option():
    from mixerlab.build import build_recipe

    cfg = compose_config(["recipe.dense_finetune_epochs=1"])
    with pytest.raises(ConfigError, match=r"recipe\.dense_finetune_epochs=1 but no module"):
        build_recipe(cfg, build_backbone(cfg))


# 2 epochs of 6 steps on digits, SSA in every layer, the last epoch dense; a checkpoint every 2 steps
SSA_RUN = (
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=1",
    "mixer.ssa={factor:4,local_bias:true}",
    "recipe.dense_finetune_epochs=1",
    "callbacks.checkpoint.every_n_steps=2",
    "~callbacks.progress",
    "+trainer.enable_progress_bar=false",
)
ENV = {"OMP_NUM_THREADS": "1"}


def test_ssa_run_killed_twice_resumes_to_the_same_weights_and_the_last_epoch_is_dense(tmp_path):
    # the uninterrupted reference trains on the other core while this thread kills and resumes (1 thread each)
    with ThreadPoolExecutor(max_workers=1) as pool:
        reference = pool.submit(run_train, tmp_path / "ref", *SSA_RUN, env=ENV)
        run_dir = tmp_path / "run"
        for step in (3, 9):  # inside the SSA epoch, then inside the dense epoch (resumes from step 8)
            proc, _ = run_train(run_dir, *SSA_RUN, "+callbacks.kill._target_=tests.faults.KillAt",
                                f"+callbacks.kill.step={step}", "+callbacks.kill.hook=batch_start",
                                check=False, env=ENV)
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        _, summary = run_train(run_dir, *SSA_RUN, env=ENV)
        _, ref = reference.result()
    state = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    counters = {k: int(v) for k, v in state.items() if k.endswith("ssa_step") and not k.startswith("ema")}
    assert len(counters) == 4 and set(counters.values()) == {6}, "SSA in epoch 0 only (6 steps)"
    assert summary["steps"] == ref["steps"] == 12
    assert summary["weights_sha256"] == ref["weights_sha256"]
