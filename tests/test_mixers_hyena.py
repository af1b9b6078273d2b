"""2-D Hyena: FFT and Toeplitz convolutions = direct causal 2-D convolution, separable implicit filters, the
whole operator against a direct reference on both routes, CLS pass-through, float32 under bf16, optimiser
marks, fixed-grid errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout
from mixers.hyena import Hyena2D, fft_conv2d, toeplitz

LAYOUT = TokenLayout(grid=(4, 4), num_prefix=1)


def direct_causal_conv2d(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y[c, i, j] = sum_{a <= i, b <= j} k[c, a, b] u[c, i - a, j - b], as an explicit loop."""
    h, w = u.shape[-2:]
    y = torch.zeros_like(u)
    for i in range(h):
        for j in range(w):
            for a in range(i + 1):
                for b in range(j + 1):
                    y[..., i, j] += k[:, a, b] * u[..., i - a, j - b]
    return y


def test_fft_conv2d_is_the_direct_causal_linear_convolution():
    torch.manual_seed(0)
    u, k = torch.randn(2, 3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(fft_conv2d(u, k), direct_causal_conv2d(u, k), rtol=1e-4, atol=1e-5)


def test_toeplitz_products_are_the_direct_causal_convolution_of_a_separable_kernel():
    torch.manual_seed(0)
    u, hx, hy = torch.randn(2, 3, 4, 5), torch.randn(3, 4), torch.randn(3, 5)
    tx, ty = toeplitz(hx), toeplitz(hy)
    assert torch.equal(tx[:, 2, 0], hx[:, 2]) and torch.equal(tx[:, 0, 2], torch.zeros(3))  # lower-triangular
    k = hx[:, :, None] * hy[:, None, :]
    torch.testing.assert_close(tx @ u @ ty.mT, direct_causal_conv2d(u, k), rtol=1e-4, atol=1e-5)
    flipped = direct_causal_conv2d(u.flip(-2, -1), k).flip(-2, -1)  # both axes flipped = T^T on both sides
    torch.testing.assert_close(tx.mT @ u @ ty, flipped, rtol=1e-4, atol=1e-5)


def reference(m: Hyena2D, patches: torch.Tensor) -> torch.Tensor:
    """The operator from its equation, direct convolutions: gates, 4 flipped causal convs, Linear(4, 1)."""
    B, n, C = patches.shape
    z = F.conv2d(m.in_proj(patches).transpose(1, 2).reshape(B, 3 * C, 4, 4), m.short_filter.weight,
                 m.short_filter.bias, padding=1, groups=3 * C)
    x0, x1, v = z.split(C, dim=1)
    window = torch.exp(-m.t * m.deltas.abs())  # (1, 4, C)
    hx, hy = m.filter_x(m.pos_emb)[0] * window[0], m.filter_y(m.pos_emb)[0] * window[0]  # (4, C)
    k = torch.einsum("ic,jc->cij", hx, hy)
    u = v * x1
    a, a0 = m.directions.weight[0], m.directions.bias[0]
    y = a0 + sum(a[d] * direct_causal_conv2d(u.flip(f), k).flip(f) if f else a[d] * direct_causal_conv2d(u, k)
                 for d, f in enumerate([(), (-2,), (-1,), (-2, -1)]))
    y = y + a.sum() * m.bias[:, None, None] * u
    return m.out_proj((y * x0).flatten(2).transpose(1, 2))


def test_hyena_is_its_equation_and_passes_cls_through():
    torch.manual_seed(0)
    m = Hyena2D(8, LAYOUT, filter_order=16)
    torch.nn.init.normal_(m.directions.weight)
    x = torch.randn(2, 17, 8)
    out = m(x)
    assert torch.equal(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1:], reference(m, x[:, 1:]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["4dir", "causal"])
def test_toeplitz_and_fft_routes_give_the_same_mixer(mode):
    torch.manual_seed(0)
    routes = [Hyena2D(8, LAYOUT, filter_order=16, directional_mode=mode, long_conv=r)
              for r in ("toeplitz", "fft")]
    routes[1].load_state_dict(routes[0].state_dict())
    if mode == "4dir":
        torch.nn.init.normal_(routes[0].directions.weight), routes[1].load_state_dict(routes[0].state_dict())
    x = torch.randn(2, 17, 8, requires_grad=True)
    outs = [r(x) for r in routes]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    grads = [torch.autograd.grad(o.square().sum(), [x, *r.parameters()])
             for o, r in zip(outs, routes, strict=True)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match=r"mixer\.long_conv='direct'"):
        Hyena2D(8, LAYOUT, long_conv="direct")


def test_toeplitz_route_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    m = Hyena2D(8, LAYOUT, filter_order=16)
    v, (hx, hy), d = torch.randn(2, 8, 4, 4).bfloat16(), m.filters(), m.bias.reshape(1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m.long_conv(v, hx[0], hy[0], d[0])
    in_float32 = m.long_conv(v.float(), hx[0], hy[0], d[0])  # no autocast: float32 throughout
    assert y.dtype == torch.bfloat16 and torch.equal(y, in_float32.bfloat16())


def test_fft_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    u, k = torch.randn(1, 2, 4, 4).bfloat16(), torch.randn(2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_conv2d(u, k)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), direct_causal_conv2d(u.float(), k), rtol=2e-2, atol=2e-2)


def test_filter_parameters_carry_the_papers_optimiser_marks_and_count():
    model = build_backbone(compose_config(["mixer=hyena"]))
    m = model.blocks[0].mixer
    for p in (*m.filter_x.parameters(), *m.filter_y.parameters(), m.sin.freq):
        assert p._optim == {"weight_decay": 0.0, "lr_scale": 1.0}
    assert m.pos_emb._optim == {"weight_decay": 0.0, "lr_scale": 0.01}
    assert not hasattr(m.in_proj.weight, "_optim") and "deltas" in dict(m.named_buffers())
    assert count_parameters(m) == 4 * 64**2 + 163 * 64 + 17_216 + 3 * 4 + 5  # reference count + Linear(4, 1)
    fan_in_bound = 64**-0.5  # PyTorch's default init for the filter MLP (safari), not the backbone's 0.02
    assert m.filter_x[2].weight.abs().max() > 0.1 and m.filter_x[2].weight.abs().max() <= fan_in_bound


def test_hyena_names_its_fixed_grid_key():
    with pytest.raises(ConfigError, match=r"mixer\.grid_size=5 but the backbone gives a 4x4"):
        build_backbone(compose_config(["mixer=hyena", "mixer.grid_size=5"]))
    with pytest.raises(ConfigError, match="square"):
        Hyena2D(8, TokenLayout(grid=(2, 4)))


def test_hyena_at_224_16_keeps_the_grid_and_the_cls_token():
    m = Hyena2D(32, TokenLayout(grid=(14, 14), num_prefix=1))
    x = torch.randn(1, 197, 32)
    out = m(x)
    assert out.shape == x.shape and torch.equal(out[:, 0], x[:, 0]) and torch.isfinite(out).all()
