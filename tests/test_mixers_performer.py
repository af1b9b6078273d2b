"""Performer (FAVOR+): the linear-time product equals the explicit kernel matrix, approximates softmax
attention, and its random features are orthogonal, redrawn on schedule and reproducible."""

from __future__ import annotations

import pytest
import torch

from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from mixers.performer import Performer, orthogonal_gaussian

GRID = TokenLayout(grid=(4, 4), num_prefix=1)


def heads(mixer: Performer, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    B, N, C = x.shape
    qkv = mixer.qkv(x).reshape(B, N, 3, mixer.num_heads, C // mixer.num_heads)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def finish(mixer: Performer, y: torch.Tensor) -> torch.Tensor:
    B, h, N, d = y.shape
    return mixer.proj(y.transpose(1, 2).reshape(B, N, h * d))


def test_linear_product_equals_the_explicit_random_feature_kernel():
    torch.manual_seed(0)
    mixer = Performer(16, GRID, num_heads=2, num_features=12).eval()
    x = torch.randn(2, 17, 16)
    q, k, v = heads(mixer, x)
    W, d = mixer.projection, 8
    qs, ks = q * d**-0.25, k * d**-0.25
    phi_q = torch.exp(qs @ W.T - qs.pow(2).sum(-1, keepdim=True) / 2 - (qs @ W.T).amax(-1, keepdim=True))
    phi_k = torch.exp(ks @ W.T - ks.pow(2).sum(-1, keepdim=True) / 2 - (ks @ W.T).amax((2, 3), keepdim=True))
    kernel = (phi_q + 1e-6) @ (phi_k + 1e-6).transpose(-2, -1)  # (B, h, N, N), the matrix FAVOR+ never forms
    expected = finish(mixer, (kernel / kernel.sum(-1, keepdim=True)) @ v)
    torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=1e-4)


def test_many_random_features_approximate_softmax_attention():
    torch.manual_seed(0)
    mixer = Performer(8, GRID, num_heads=1, num_features=4096).eval()
    x = 0.3 * torch.randn(2, 17, 8)
    q, k, v = heads(mixer, x)
    exact = finish(mixer, torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, -1) @ v)
    error = (mixer(x) - exact).abs().max()
    assert error < 0.05 * exact.abs().max()
    mixer.projection = orthogonal_gaussian(4, 8, torch.Generator().manual_seed(0))  # same weights, m = 4
    assert (mixer(x) - exact).abs().max() > 2 * error


def test_random_features_are_orthogonal_gaussian_blocks():
    mixer = Performer(64, GRID, num_heads=2)  # d = 32, default m = d ln d = 110: three full blocks + 14 rows
    W = mixer.projection
    assert W.shape == (110, 32)
    directions = W / W.norm(dim=1, keepdim=True)
    for block in (directions[:32], directions[32:64], directions[96:]):
        gram = block @ block.T
        torch.testing.assert_close(gram, torch.eye(len(block)), atol=1e-5, rtol=0)
    assert 0.8 < W.norm(dim=1).mean() / 32**0.5 < 1.2  # row norms ~ chi_32, not unit


def test_features_are_redrawn_every_interval_from_seed_layer_and_step():
    mixer = Performer(16, GRID, num_heads=2, redraw_interval=2, seed=3, layer_index=1)
    twin = Performer(16, GRID, num_heads=2, redraw_interval=2, seed=3, layer_index=1)
    other_layer = Performer(16, GRID, num_heads=2, redraw_interval=2, seed=3, layer_index=2)
    assert torch.equal(mixer.projection, twin.projection)
    assert not torch.equal(mixer.projection, other_layer.projection)
    x = torch.randn(1, 17, 16)
    draws = []
    for _ in range(5):
        mixer(x)
        draws.append(mixer.projection.clone())
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])  # redrawn at step 2
    assert torch.equal(draws[2], draws[3]) and not torch.equal(draws[3], draws[4])  # and at step 4
    assert int(mixer.step) == 5
    mixer.eval()(x)
    assert int(mixer.step) == 5 and torch.equal(mixer.projection, draws[4])  # evaluation draws nothing
    twin.step.fill_(4)
    twin.redraw()
    assert torch.equal(twin.projection, draws[4])  # a function of (seed, layer, step) alone


def test_projection_and_step_are_checkpointed():
    state = Performer(16, GRID, num_heads=2).state_dict()
    assert {"projection", "step"} <= set(state)


@pytest.mark.parametrize(
    ("key", "value"), [("mixer.num_features", 0), ("mixer.redraw_interval", -1), ("mixer.kernel", "cos")]
)
def test_impossible_options_fail_at_config_time_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config(["mixer=performer", f"{key}={value}"]))
