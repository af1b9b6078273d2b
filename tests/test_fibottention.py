"""Fibottention: the masks of REFERENCE.md section 2, the faithful variant, and the sparse backends."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F

from mixerlab.errors import ConfigError
from mixers import fibottention as fib
from mixers.contract import TokenLayout

VIT_B_OFFSETS = [
    [1, 2, 3, 5],
    [4, 7],
    [6, 10],
    [9, 15],
    [12, 20],
    [14, 23],
    [17, 28],
    [19, 31],
    [22, 36],
    [25, 41],
    [27, 44],
    [30, 49],
]


def test_vit_b_offsets_are_the_reference_list():
    assert fib.fibonacci_offsets(196, 12) == VIT_B_OFFSETS


@pytest.mark.parametrize(("heads", "percent"), [(12, 1.99), (6, 3.54), (3, 4.45)])
def test_kept_fraction_of_patch_pairs(heads, percent):
    offsets = fib.fibonacci_offsets(196, heads)
    assert round(100 * fib.kept_fraction(offsets, 196), 2) == percent
    mask = fib.fibottention_mask(offsets, 196)
    assert mask.float().mean().item() == pytest.approx(fib.kept_fraction(offsets, 196))


def test_heads_are_shuffled_per_layer_as_the_official_code_does():
    offsets = fib.fibonacci_offsets(196, 12)
    for layer in range(3):
        expected = list(offsets)
        random.seed(layer)
        random.shuffle(expected)
        module = fib.Fibottention(768, TokenLayout((14, 14), 1), num_heads=12, layer_index=layer)
        assert module.offsets == expected
    assert fib.shuffled_heads(offsets, 0) != fib.shuffled_heads(offsets, 1)


def test_mask_keeps_the_cls_row_and_column_and_excludes_self():
    offsets = fib.fibonacci_offsets(196, 12)
    mask = fib.fibottention_mask(offsets, 196, num_prefix=1)
    assert mask.shape == (12, 197, 197)
    assert mask[:, 0].all() and mask[:, :, 0].all()
    assert not mask[:, 1:, 1:].diagonal(dim1=-2, dim2=-1).any()
    assert mask[0, 1 + 10, 1 + 10 + 5] and mask[0, 1 + 10, 1 + 10 - 5] and not mask[0, 1 + 10, 1 + 10 + 4]
    with_self = fib.fibottention_mask(fib.fibonacci_offsets(196, 12, include_self=True), 196)
    assert with_self.diagonal(dim1=-2, dim2=-1).all()


def _qkv(module, x):
    B, N, C = x.shape
    qkv = module.qkv(x).reshape(B, N, 3, module.num_heads, C // module.num_heads)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _finish(module, y):
    B, h, N, d = y.shape
    return module.proj(y.transpose(1, 2).reshape(B, N, h * d))


def test_faithful_variant_multiplies_logits_by_the_mask():
    torch.manual_seed(0)
    layout = TokenLayout((6, 6), 1)
    module = fib.Fibottention(32, layout, num_heads=4, variant="faithful", layer_index=2)
    x = torch.randn(2, 37, 32)
    q, k, v = _qkv(module, x)
    logits = (q @ k.transpose(-2, -1)) / 8**0.5 * module.dense_mask()  # masked pairs -> logit 0
    expected = _finish(module, logits.softmax(-1) @ v)
    torch.testing.assert_close(module(x), expected)
    sparse = fib.Fibottention(32, layout, num_heads=4, variant="sparse", layer_index=2)
    sparse.load_state_dict(module.state_dict())
    assert not torch.allclose(sparse(x), module(x), atol=1e-3)  # -inf, not 0, for masked pairs


@pytest.mark.parametrize("prefix", [1, 0])
@pytest.mark.parametrize("backend", ["diagonal", "dense", "flex"])
def test_sparse_variant_equals_dense_attention_with_minus_inf_mask(backend, prefix):
    torch.manual_seed(0)
    module = fib.Fibottention(
        32, TokenLayout((6, 6), prefix), num_heads=4, variant="sparse", sparse_backend=backend, layer_index=1
    )
    x = torch.randn(2, 36 + prefix, 32)
    q, k, v = _qkv(module, x)
    expected = _finish(module, F.scaled_dot_product_attention(q, k, v, attn_mask=module.dense_mask()))
    if backend == "flex":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager FlexAttention on CPU warns that it is not compiled
            out = module(x)
    else:
        out = module(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_diagonal_backend_gradients_equal_dense_masked_attention():
    torch.manual_seed(0)
    layout = TokenLayout((5, 5), 1)
    diagonal = fib.Fibottention(24, layout, num_heads=3, variant="sparse", sparse_backend="diagonal")
    dense = fib.Fibottention(24, layout, num_heads=3, variant="sparse", sparse_backend="dense")
    dense.load_state_dict(diagonal.state_dict())
    x = torch.randn(2, 26, 24, requires_grad=True)
    grads = [torch.autograd.grad(m(x).square().sum(), [x, *m.parameters()]) for m in (diagonal, dense)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_flex_backend_training_on_cpu_falls_back_to_dense_and_says_so_once():
    fib._warned.clear()
    module = fib.Fibottention(
        16, TokenLayout((4, 4), 1), num_heads=2, variant="sparse", sparse_backend="flex"
    )
    x = torch.randn(1, 17, 16)
    with pytest.warns(UserWarning, match="FlexAttention has no CPU backward"):
        module(x).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module(x).sum().backward()
    assert module.backend_for(torch.zeros(1, requires_grad=True)) == "dense"


def test_auto_backend_is_the_sparse_diagonal_path_on_cpu():
    module = fib.Fibottention(16, TokenLayout((4, 4), 1), num_heads=2, variant="sparse")
    assert module.backend_for(torch.zeros(1, requires_grad=True)) == "diagonal"
    assert module._dense_masks == {}  # no N x N mask was ever built


@pytest.mark.parametrize("backend", ["diagonal", "dense"])
def test_rows_without_any_kept_key_output_zero_with_finite_gradients(backend):
    # 3x3 patches, no CLS, 6 heads: the later heads' smallest offsets exceed the grid
    module = fib.Fibottention(
        24, TokenLayout((3, 3), 0), num_heads=6, variant="sparse", sparse_backend=backend
    )
    assert any(min(o) >= 9 for o in module.offsets)
    x = torch.randn(2, 9, 24, requires_grad=True)
    module(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bad_variant_or_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="mixer.variant"):
        fib.Fibottention(16, TokenLayout((4, 4), 1), num_heads=2, variant="sparsest")
    with pytest.raises(ConfigError, match="mixer.sparse_backend"):
        fib.Fibottention(16, TokenLayout((4, 4), 1), num_heads=2, sparse_backend="triton")
