"""LAMA as a read-out (mixerlab/lama.py, ``backbone.head=lama``): the vectorised pooling against explicit
loops over heads and tokens, both context choices, its place in the ViT, and config errors naming keys."""

from __future__ import annotations

import math

import pytest
import torch

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import count_parameters
from mixerlab.errors import ConfigError
from mixerlab.lama import LamaPooling
from mixerlab.schema import validate
from tests.conftest import tiny_vit


def naive_lama(pool: LamaPooling, x: torch.Tensor) -> torch.Tensor:
    """The operator written out one head and one token at a time, in float64."""
    x = x.double()
    B, N, C = x.shape
    P = pool.proj_context.weight.detach().double()  # (m, C)
    Q = pool.proj_tokens.weight.detach().double()  # (m, C)
    out = torch.zeros(B, pool.num_heads, C, dtype=torch.float64)
    for b in range(B):
        c = pool.context.detach().double() if pool.context is not None else x[b].mean(dim=0)
        scores = [[0.0] * pool.num_heads for _ in range(N)]
        for t in range(N):
            raw = [math.tanh(float(P[i] @ c) * float(Q[i] @ x[b, t])) for i in range(pool.num_heads)]
            norm = max(math.sqrt(sum(r * r for r in raw)), 1e-12)
            scores[t] = [r / norm for r in raw]
        for i in range(pool.num_heads):
            e = [math.exp(scores[t][i]) for t in range(N)]
            for t in range(N):
                out[b, i] += e[t] / sum(e) * x[b, t]
    return out


@pytest.mark.parametrize("context", ["learned", "mean"])
def test_lama_pooling_matches_explicit_loops_over_heads_and_tokens(context):
    torch.manual_seed(0)
    pool = LamaPooling(dim=6, num_heads=3, context=context)
    torch.nn.init.normal_(pool.proj_context.weight)  # unit scale: the tanh saturates, the softmax is uneven
    torch.nn.init.normal_(pool.proj_tokens.weight)
    x = torch.randn(2, 5, 6)
    ours = pool(x)
    assert ours.shape == (2, 3, 6)
    torch.testing.assert_close(ours.double(), naive_lama(pool, x), rtol=1e-5, atol=1e-6)
    weights = pool.weights(x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    assert weights.std() > 0.01  # not uniform: the check above would pass for a plain mean otherwise


def test_the_mean_context_follows_the_tokens_and_the_learned_one_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 6)
    for context, moves in (("mean", True), ("learned", False)):
        pool = LamaPooling(dim=6, num_heads=3, context=context)
        shifted = x.clone()
        shifted[:, 0] += 3.0  # one token moves: with c = mean(x), every token's score changes through c
        c = pool.proj_context(pool.context if context == "learned" else x.mean(1))
        c_shifted = pool.proj_context(pool.context if context == "learned" else shifted.mean(1))
        assert (not torch.allclose(c, c_shifted)) == moves
    assert sum(p.numel() for p in LamaPooling(384, 12, "mean").parameters()) == 9_216  # 2 C m


def test_lama_head_in_the_vit_gives_logits_and_counts_its_weights():
    model = tiny_vit(head="lama")  # 32 wide, no CLS token
    gap = tiny_vit(head="gap")
    assert model.cls_token is None and model.layout.num_prefix == 0
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    m, C = 4, 32
    # P and Q (2 C m) and c (C); the classifier reads m*C features instead of C
    assert count_parameters(model) - count_parameters(gap) == 2 * C * m + C + (m - 1) * C * 10


def test_lama_head_learns_a_step():
    torch.manual_seed(0)
    model = tiny_vit(head="lama")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    before = model.head.pool.proj_tokens.weight.detach().clone()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.head.pool.proj_tokens.weight.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.head.pool.proj_tokens.weight)


@pytest.mark.parametrize("override, key", [
    ("backbone.lama_context=median", "backbone.lama_context"),
    ("backbone.lama_heads=0", "backbone.lama_heads"),
    ("backbone.head=attention", "backbone.head"),
])
def test_bad_lama_options_are_config_errors_naming_the_key(override, key):
    cfg = compose_config(["backbone.head=lama", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(cfg)


def test_a_deit_file_loads_into_a_lama_model_with_a_new_read_out(tmp_path):
    """Fine-tuning with the LAMA read-out: everything but the CLS token and the classifier loads."""
    import timm

    from mixerlab.pretrained import load_pretrained

    torch.manual_seed(0)
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64).state_dict(),
               tmp_path / "deit.pth")
    model = build_backbone(compose_config(["experiment=deit_tiny", "data.img_size=64", "backbone.head=lama"]))
    report = load_pretrained(model, tmp_path / "deit.pth")
    assert sorted(report.initialised) == ["head.fc.bias", "head.fc.weight", "head.pool.context",
                                          "head.pool.proj_context.weight", "head.pool.proj_tokens.weight"]
    assert sorted(report.ignored) == ["cls_token", "head.bias", "head.weight"]
    assert all("backbone.head=lama" in why for why in report.ignored.values())
    assert "prefix positions 1 -> 0" in report.resampled["pos_embed"]
