"""SG-Former (mixerlab/sgformer.py): the official structure and parameter count, the token reallocation and
the significance map against naive per-sample computations, the map handed from block to block, config
errors, and a digits run that checkpoints, resumes and evaluates like any other backbone."""

from __future__ import annotations

import json
import math
import re
import signal
from functools import partial

import pytest
import torch
from torch import nn

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import count_parameters
from mixerlab.errors import ConfigError
from mixerlab.pretrained import apply_init, load_pretrained
from mixerlab.sgformer import (
    HybridScaleAttention,
    PlainAttention,
    SelfGuidedAttention,
    SGFormer,
    reallocate,
)
from mixers.attention import Attention
from tests.conftest import run_train


def sgformer(*overrides: str, seed: int = 0) -> SGFormer:
    torch.manual_seed(seed)
    return build_backbone(compose_config(["backbone=sgformer", *overrides]))


def digits_sgformer(stages: list[dict], seed: int = 0, **kwargs) -> SGFormer:
    torch.manual_seed(seed)
    return SGFormer(partial(Attention), stages, img_size=16, in_chans=1, num_classes=10, window=2, **kwargs)


def spread(module: nn.Module, std: float = 0.5, seed: int = 0) -> None:
    """Weights far from the 0.02 init, so that attention is far from uniform and a wrong index shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


# ---------------------------------------------------------------------------------------------- structure
def test_sgformer_s_has_the_official_structure_and_parameter_count():
    with torch.device("meta"):
        model = build_backbone(compose_config(["experiment=sgformer_s"]))
    assert count_parameters(model) == 22_545_981  # the official sgformer_s, built
    assert model.pos_embed.shape == (1, 56 * 56, 64)
    assert [stage.layout.grid for stage in model.stages] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    kinds = [[type(block.mixer).__name__[0] for block in stage.blocks] for stage in model.stages]
    assert ["".join(k) for k in kinds] == ["HS", "HSHS", "HS" * 8, "P"]  # hybrid, self-guided, plain
    # keys and values of a self-guided block: 4 + 28 + 28, 4 + 28 + 28, 49 + 98 (of 3136, 784, 196 tokens)
    assert [stage.blocks[1].mixer.num_kv_tokens for stage in model.stages[:3]] == [60, 60, 147]


def test_position_embedding_is_maes_2d_sin_cos():
    model = digits_sgformer([{"depth": 1, "dim": 32, "sr_ratio": 1}])
    table = model.pos_embed[0].detach()  # (4*4, 32): columns in the first half, rows in the second
    omega = 10000 ** (-1 / 8)
    r, c = 2, 3
    expected = [math.sin(c), math.sin(c * omega), math.cos(c), math.sin(r), math.sin(r * omega), math.cos(r)]
    assert table[r * 4 + c, [0, 1, 8, 16, 17, 24]].tolist() == pytest.approx(expected, abs=1e-6)
    assert model.pos_embed.requires_grad and "pos_embed" not in model.no_weight_decay()  # decayed, as
    # the official training does


# ---------------------------------------------------------------------------------------------- reallocation
def naive_reallocation(tokens, significance, slices, merges):
    """One sample at a time: order the token indices by significance with Python's sort, then merge."""
    out = []
    for x, s in zip(tokens, significance, strict=True):
        order = sorted(range(len(s)), key=lambda i: s[i].item())
        merged, start = [], 0
        for (n, r), merge in zip(slices, merges, strict=True):
            w, b = merge.weight[0], merge.bias[0]
            for group in range(n // r):
                members = order[start + group * r:start + (group + 1) * r]
                merged.append(sum(w[k] * x[i] for k, i in enumerate(members)) + b)
            start += n
        out.append(torch.stack(merged))
    return torch.stack(out)


def test_reallocation_sorts_gathers_and_merges_as_a_per_sample_loop():
    torch.manual_seed(0)
    slices = [(4, 4), (8, 2), (4, 1)]  # 16 tokens -> 1 + 4 + 4
    merges = nn.ModuleList(nn.Linear(r, 1) for _, r in slices)
    spread(merges)
    tokens, significance = torch.randn(3, 16, 5), torch.rand(3, 16)
    got = reallocate(tokens, significance, slices, merges)
    assert got.shape == (3, 9, 5)
    torch.testing.assert_close(got, naive_reallocation(tokens, significance, slices, merges))


def test_both_flattenings_reallocate_the_same_tokens_when_the_map_has_no_ties():
    """Row-major tokens with the row-major map, column-major tokens with the column-major map: each token
    keeps its own significance, so both sorted sequences (and reallocations) are the same."""
    torch.manual_seed(0)
    slices = [(8, 2), (8, 1)]
    merges = nn.ModuleList(nn.Linear(r, 1) for _, r in slices)
    spread(merges)
    x, significance = torch.randn(2, 4, 4, 3), torch.rand(2, 4, 4)
    by_rows = reallocate(x.reshape(2, 16, 3), significance.reshape(2, 16), slices, merges)
    by_cols = reallocate(x.transpose(1, 2).reshape(2, 16, 3), significance.transpose(1, 2).reshape(2, 16),
                         slices, merges)
    torch.testing.assert_close(by_rows, by_cols)
    mismatched = reallocate(x.transpose(1, 2).reshape(2, 16, 3), significance.reshape(2, 16), slices, merges)
    assert not torch.allclose(by_rows, mismatched)


# ---------------------------------------------------------------------------------------------- significance
def naive_hybrid(attn: HybridScaleAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hybrid-scale attention one sample, head and window at a time, with explicit token indices."""
    (h, w), sr, win, heads = attn.grid, attn.sr_ratio, attn.window, attn.num_heads
    B, N, C = x.shape
    g, d = heads // 2, C // heads
    reduced = attn.act(attn.reduce_norm(attn.reduce(x.transpose(1, 2).reshape(B, C, h, w)).flatten(2).mT))
    outputs, maps = [], []
    for b in range(B):
        out, received = torch.zeros(N, C), torch.zeros(N)
        q1, kv1 = attn.q1(x[b]), attn.kv1(reduced[b])  # (N, C/2), (N/sr², C)
        for head in range(g):
            cols = slice(head * d, (head + 1) * d)
            k, v = kv1[:, :C // 2][:, cols], kv1[:, C // 2:][:, cols]
            p = torch.softmax(q1[:, cols] @ k.T / math.sqrt(d), dim=-1)  # (N, N/sr²)
            out[:, cols] = p @ v
            for t in range(N):  # each token receives what its reduced cell receives
                cell = (t // w // sr) * (w // sr) + (t % w) // sr
                received[t] += p[:, cell].mean() / g
        for wy in range(h // win):
            for wx in range(w // win):
                idx = [(wy * win + i) * w + wx * win + j for i in range(win) for j in range(win)]
                q2, kv2 = attn.q2(x[b, idx]), attn.kv2(x[b, idx])
                for head in range(g):
                    cols = slice(head * d, (head + 1) * d)
                    k, v = kv2[:, :C // 2][:, cols], kv2[:, C // 2:][:, cols]
                    p = torch.softmax(q2[:, cols] @ k.T / math.sqrt(d), dim=-1)  # (win², win²)
                    out[idx, C // 2 + head * d:C // 2 + (head + 1) * d] = p @ v
                    received[idx] += p.mean(dim=0) / g
        outputs.append(attn.proj(out + attn.lepe(x[b:b + 1])[0]))
        maps.append(received.reshape(h, w))
    return torch.stack(outputs), torch.stack(maps)


@pytest.mark.parametrize("sr, window", [(2, 4), (4, 2)])
def test_hybrid_scale_attention_and_its_significance_map_match_a_naive_computation(sr, window):
    attn = HybridScaleAttention(dim=16, num_heads=4, grid=(8, 8), sr_ratio=sr, window=window, qkv_bias=True)
    spread(attn)
    x = torch.randn(2, 64, 16)
    with torch.no_grad():
        out, significance = attn(x)
        expected_out, expected_map = naive_hybrid(attn, x)
    assert significance.shape == (2, 8, 8)
    torch.testing.assert_close(significance, expected_map, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out, expected_out, rtol=1e-4, atol=1e-5)
    # global and local halves together: each sums to 1 over keys, so the mean received is sr²/N + 1/win²
    assert significance.mean().item() == pytest.approx(sr * sr / 64 + 1 / window**2, rel=1e-5)


# ---------------------------------------------------------------------------------------------- the map
def test_each_hybrid_blocks_map_reaches_the_next_block_and_drives_it():
    model = sgformer().eval()
    received, returned = {}, {}

    def keep(i: int, inputs: tuple, out: tuple) -> None:  # the map in and the map out of block i
        received[i], returned[i] = inputs[0], out[0]

    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda _m, inputs, out, i=i: keep(i, inputs, out))
    model(torch.randn(2, 1, 16, 16))
    kinds = [type(block.mixer) for block in model.blocks]
    assert kinds == [HybridScaleAttention, SelfGuidedAttention] * 2 + [PlainAttention] * 2
    assert received[0] is None
    for i in (1, 3):  # a self-guided block gets exactly the map its hybrid-scale block returned
        assert received[i] is returned[i - 1] and returned[i - 1].shape[1:] == model.blocks[i].mixer.grid
        assert returned[i] is None
    assert received[4] is None and returned[4] is None and returned[5] is None

    block, x = model.blocks[1], torch.randn(2, 16, 32)  # stage 1: 4x4 grid, 32 wide
    significance = torch.rand(2, 4, 4)
    _, out = block(significance, x)
    _, same = block(significance * 2 + 1, x)  # the same order: the same reallocation
    _, other = block(significance.flip(1), x)
    torch.testing.assert_close(out, same)
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="significance map"):
        block(None, x)


def test_the_map_crosses_a_stage_border_and_a_hybrid_block_replaces_it():
    """Stage 1 of odd depth ends with a hybrid-scale block: its map goes into stage 2, whose first block
    (hybrid-scale) makes its own, as the official forward threads one map through all stages."""
    model = digits_sgformer([{"depth": 3, "dim": 32, "sr_ratio": 2, "merge": [[1, 2], [1, 1]]},
                             {"depth": 2, "dim": 64, "sr_ratio": 2, "merge": [[1, 2], [1, 1]]}]).eval()
    seen = {}
    model.stages[1].blocks[0].register_forward_hook(lambda _m, inputs, out: seen.update(given=inputs[0],
                                                                                         made=out[0]))
    model(torch.randn(2, 1, 16, 16))
    assert seen["given"].shape == (2, 4, 4) and seen["made"].shape == (2, 2, 2)


# ---------------------------------------------------------------------------------------------- training
def test_every_parameter_gets_a_finite_gradient_with_both_read_outs():
    for head in ("gap", "lama"):
        model = sgformer(f"backbone.head={head}", "backbone.drop_path_rate=0.1")
        logits = model(torch.randn(4, 1, 16, 16))
        logits.logsumexp(-1).sum().backward()
        assert logits.shape == (4, 10)
        missing = [n for n, p in model.named_parameters()
                   if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum()]
        assert not missing, f"{head}: no gradient reaches {missing}"


@pytest.mark.parametrize("override, key", [
    ("mixer=pooling", "mixer=attention"),
    ("backbone.head=cls", "backbone.head"),
    ("backbone.window=3", "backbone.window"),
    ("+backbone.stages.0.num_heads=3", "backbone.stages[0].num_heads"),
    ("backbone.stages.0.merge=[[1,3],[1,1]]", "backbone.stages[0].merge"),
    ("backbone.stages.1.sr_ratio=4", "backbone.stages[1].sr_ratio"),
    ("backbone.stages.0.dim=30", "backbone.stages[0].dim"),
])
def test_bad_sgformer_options_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        sgformer(override)


RUN = ("backbone=sgformer", "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
       "callbacks.checkpoint.every_n_steps=2", "recipe.ema_decay=0.9", "backbone.drop_path_rate=0.1",
       "~callbacks.progress", "+trainer.enable_progress_bar=false")
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sgformer_trains_on_digits_resumes_exactly_and_evaluates(tmp_path):
    """A short run; the same run SIGKILLed after its step-2 checkpoint and re-run ends with the same weights;
    its checkpoint loads back (raw and EMA) and eval.py scores the EMA weights as the run did."""
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    _, ref = run_train(ref_dir, *RUN, env=ENV)
    assert ref["status"] == "completed" and ref["steps"] == 4 and ref["backbone"] == "sgformer"
    assert ref["params"] == count_parameters(sgformer()) and math.isfinite(ref["train_loss"])

    kill = ("+callbacks.kill._target_=tests.faults.KillAt", "+callbacks.kill.step=3")
    proc, _ = run_train(run_dir, *RUN, *kill, check=False, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    _, resumed = run_train(run_dir, *RUN, env=ENV)
    assert resumed["resumed_from_step"] == 2 and resumed["weights_sha256"] == ref["weights_sha256"]
    assert resumed["top1_ema"] == ref["top1_ema"]

    checkpoint = ref_dir / "checkpoints" / "last.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for ema in (False, True):
        model = sgformer(seed=1)
        report = load_pretrained(model, checkpoint, ema=ema)
        assert report.source == "mixerlab" and not report.initialised and not report.ignored
        prefix = "ema.module." if ema else "backbone."
        for key, value in model.state_dict().items():
            assert torch.equal(value, stored["state_dict"][prefix + key]), key
    families = [f.rsplit(".", 1)[-1] for f in stored["mixer_families"]]
    assert families == ["HybridScaleAttention", "SelfGuidedAttention"] * 2 + ["PlainAttention"] * 2

    from tests.test_eval import evaluate_in_process

    evaluate_in_process(f"run={ref_dir}")
    clean = json.loads((ref_dir / "eval.json").read_text())["sets"]["clean"]
    assert clean["top1"] == pytest.approx(ref["top1_ema"], abs=0.01)


def test_receptive_fields_read_the_tokens_each_block_hands_on():
    """The ERF hooks take a block's last output as its tokens: the map goes first, so they get tokens."""
    from mixerlab.erf import effective_receptive_fields

    maps = effective_receptive_fields(sgformer().eval(), torch.randn(2, 1, 16, 16), [0, -1])
    assert maps[0].shape == maps[5].shape == (16, 16)
    assert maps[0].max() > 0 and maps[5].min() > 0  # the last block (2x2 grid, global MHSA) sees every pixel


def test_layer_decay_puts_the_stem_first_and_each_stage_norm_with_its_last_block():
    from mixerlab.recipe import layer_decay_scales

    scales = layer_decay_scales(sgformer(), 0.5)
    assert scales["pos_embed"] == scales["stem.conv.0.0.weight"] == min(scales.values())
    assert (scales["stages.0.blocks.3.mixer.merge.0.weight"] == scales["stages.0.norm.weight"]
            < scales["stages.1.downsample.conv1.0.weight"] < scales["stages.1.blocks.1.mlp.fc2.weight"])
    assert scales["head.weight"] == 1.0


def official_name(key: str) -> str:
    """Our state-dict key -> the official sgformer.py's (its module names, stages counted from 1)."""
    key = re.sub(r"^stem\.norm\.", "patch_embed1.norm.", key)
    key = re.sub(r"^stem\.conv\.(\d)\.0\.", r"patch_embed1.conv.\1.c.", key)
    key = re.sub(r"^stem\.conv\.(\d)\.1\.", r"patch_embed1.conv.\1.bn.", key)
    for part, name in (("0", "c"), ("1", "bn")):  # Conv2d_BN's conv and norm
        key = re.sub(rf"^stages\.(\d)\.downsample\.(conv\d)\.{part}\.",
                     lambda m, name=name: f"patch_embed{int(m[1]) + 1}.{m[2]}.{name}.", key)
    key = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"block{int(m[1]) + 1}.", key)
    for ours, theirs in ((".mixer.reduce.", ".attn.sr."), (".mixer.reduce_norm.", ".attn.norm."),
                         (".mixer.lepe.linear.", ".attn.lepe_linear."),
                         (".mixer.lepe.conv.", ".attn.lepe_conv."),
                         (".mlp.dwconv.", ".mlp.dwconv.dwconv."), (".mixer.", ".attn.")):
        key = key.replace(ours, theirs)
    return re.sub(r"\.attn\.merge\.(\d)\.", lambda m: f".attn.f{int(m[1]) + 1}.", key)


def test_an_official_sgformer_state_dict_loads_through_init_checkpoint(tmp_path):
    """A state dict under the official module names (``block1.1.attn.f1.weight``, ``patch_embed2.conv2.bn``)
    loads into every tensor of ours: source ``sgformer``, nothing left initialised or ignored."""
    source = sgformer(seed=0)
    state = {official_name(k): v for k, v in source.state_dict().items()}
    assert {"block1.1.attn.f2.bias", "block1.0.attn.sr.weight", "patch_embed2.conv2.bn.weight",
            "norm2.weight", "block2.0.mlp.dwconv.dwconv.weight", "patch_embed1.conv.4.c.weight"} <= set(state)
    torch.save({"model": state}, tmp_path / "official.pth")
    cfg = compose_config(["backbone=sgformer", f"init.checkpoint={tmp_path / 'official.pth'}"])
    torch.manual_seed(1)
    model = build_backbone(cfg)
    report = apply_init(cfg.init, model)
    assert report["source"] == "sgformer"
    assert not report["initialised"] and not report["ignored"] and not report["resampled"]
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
