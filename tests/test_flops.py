"""Forward FLOPs of every mixer against its analytic formula, on whichever torch is installed.

The table
---------
``ANALYTIC`` maps a mixer's name (``conf/mixer/<name>.yaml``) to a function ``f(case) -> int``: the mixer's
forward FLOPs for ONE sample of ``case.N`` tokens (``case.P`` prefix tokens, then the ``case.h x case.w``
grid) of width ``case.C``, built from the shipped yaml's options (``case.opt``: the resolved ``mixer`` node,
e.g. ``case.opt["num_heads"]``). Conventions, those of ``mixerlab/costs.py``: a multiply-add counts 2 (a
``(m, k) x (k, n)`` matmul is ``2mkn``; a Linear's bias and every elementwise op — activations, softmax,
norms, pooling, complex products — count 0); an FFT of ``n`` points is ``5 n log2 n`` complex, half real,
:func:`fft` below. The test builds each mixer bare (the yaml's partial, ``dim=case.C``, ``layout``) at two
token counts (4x4 and 8x8 patches, no prefix, C = 64, 2 heads, the digits config's width) and compares the
counter's total with the formula; a yaml with no entry fails, saying to add one.

Adding a mixer: write its formula here, derived from the paper's equation (not from running the counter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mixerlab import costs
from mixerlab.build import CONF_DIR, build_backbone, compose_config
from mixers.contract import TokenLayout

WIDTH = 64
GRIDS = [(4, 4), (8, 8)]


@dataclass
class Case:
    h: int
    w: int
    C: int
    P: int = 0
    opt: dict = field(default_factory=dict)

    @property
    def N(self) -> int:
        return self.P + self.h * self.w

    @property
    def heads(self) -> int:
        return self.opt["num_heads"]


def fft(n: int, real: bool) -> float:
    """One transform of n points: 5 n log2 n (complex), half for a real transform."""
    return 5 * n * math.log2(n) / (2 if real else 1) if n > 1 else 0


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention(c: Case) -> int:
    # qkv, q kᵀ and p v (every head: 2·N·N·d, h·d = C), output projection
    return linear(c.N, c.C, 3 * c.C) + 4 * c.N * c.N * c.C + linear(c.N, c.C, c.C)


def xca(c: Case) -> int:
    d = c.C // c.heads  # per head: q̂ k̂ᵀ is (d, N) x (N, d), A v is (d, d) x (d, N)
    return linear(c.N, c.C, 3 * c.C) + c.heads * (2 * d * c.N * d + 2 * d * d * c.N) + linear(c.N, c.C, c.C)


def token_mlp(c: Case) -> int:
    hidden = int(c.N * c.opt["mlp_ratio"])  # per channel: Linear(N -> rN), Linear(rN -> N)
    return linear(c.C, c.N, hidden) + linear(c.C, hidden, c.N)


def global_filter(c: Case) -> int:
    # rfft2 and irfft2 of each channel's h x w grid; the filter's product is elementwise
    return int(2 * c.C * fft(c.h * c.w, real=True))


def fnet(c: Case) -> int:
    return int(fft(c.N * c.C, real=False))  # one complex 2-D transform over (tokens, channels)


def afno(c: Case) -> int:
    blocks, factor = c.opt["num_blocks"], c.opt["hidden_size_factor"]
    bs = c.C // blocks
    frequencies = c.h * (c.w // 2 + 1)
    # two complex block-diagonal layers, each four real (bs x bs·f) matmuls per block and frequency
    mlp = 2 * 4 * blocks * 2 * frequencies * bs * bs * factor
    return int(2 * c.C * fft(c.h * c.w, real=True)) + mlp


def random_mixing(c: Case) -> int:
    return 2 * c.N * c.N * c.C  # R (N x N) times x (N x C)


def performer(c: Case) -> int:
    d = c.C // c.heads
    m = c.opt["num_features"] or int(d * math.log(d))  # null: d ln d
    # per head: features W q', W k' (N, d) x (d, m); φ(K)ᵀ V (m, N) x (N, d); φ(Q) (φ(K)ᵀ V) (N, m) x (m, d);
    # D = φ(Q) Σ φ(K) (N, m) x (m, 1)
    per_head = 2 * (2 * c.N * d * m) + 2 * m * c.N * d + 2 * c.N * m * d + 2 * c.N * m
    return linear(c.N, c.C, 3 * c.C) + c.heads * per_head + linear(c.N, c.C, c.C)


def nystrom(c: Case) -> int:
    d = c.C // c.heads
    m = c.opt["num_landmarks"] or min(64, c.N // 2)  # null: min(64, N // 2)
    iterations = c.opt["pinv_iterations"]
    # per head: q k~ᵀ (N, m), q~ kᵀ (m, N), q~ k~ᵀ (m, m); Newton-Schulz: 4 (m x m) products per iteration;
    # kernel_1 · pinv (N, m) x (m, m); kernel_3 · v (m, N) x (N, d); then (N, m) x (m, d)
    per_head = 2 * c.N * m * d * 2 + 2 * m * m * d + iterations * 4 * 2 * m**3 + 2 * c.N * m * m
    per_head += 2 * m * c.N * d + 2 * c.N * m * d
    return linear(c.N, c.C, 3 * c.C) + c.heads * per_head + linear(c.N, c.C, c.C)


def routing(c: Case) -> int:
    d = c.C // c.heads
    clusters = c.opt["num_clusters"] or round(math.sqrt(c.N))  # null: round(sqrt(N))
    w = c.N // clusters
    # W_qk, W_v, W_o; per head: routing scores q^ μᵀ (N, d) x (d, c); per cluster q k^ᵀ and A v, (w, w) each
    per_head = 2 * c.N * d * clusters + clusters * (2 * w * w * d + 2 * w * w * d)
    return 3 * linear(c.N, c.C, c.C) + c.heads * per_head
def tssa(c: Case) -> int:
    # one projection, per head the (1, N) x (N, d) second moment pi·w², output projection
    return linear(c.N, c.C, c.C) + 2 * c.N * c.C + linear(c.N, c.C, c.C)


def ponet(c: Case) -> int:
    # Q, K, O, S, L and output projections; per head g·Kᵀ (1 x d x N) and a·K (1 x N x d); max-pools: 0
    return 6 * linear(c.N, c.C, c.C) + 4 * c.N * c.C


def combiner(c: Case) -> int:
    s = c.opt["segment_len"] or c.w  # segment length (null: a grid row); n segments of the M patches
    n, M = c.h * c.w // s, c.h * c.w
    # per head (h·d = C): summary pooling q̃·kᵀ and p·v (2Md each), own-segment logits and values (2Msd
    # each), logits against and values of the n summaries (2Mnd each)
    return linear(c.N, c.C, 3 * c.C) + 4 * M * c.C * (1 + s + n) + linear(c.N, c.C, c.C)



def gpsa(c: Case) -> int:
    # W_qk, W_v, W_o; v_pos = Linear(3, H) on the N x N offsets; q kᵀ and A v over every head
    n = c.h * c.w
    return linear(n, c.C, 3 * c.C) + linear(n, c.C, c.C) + linear(n * n, 3, c.heads) + 4 * n * n * c.C


def axis_attention(axis: str):
    def flops(c: Case) -> int:
        line = c.w if axis == "row" else c.h  # each patch attends to the patches of its row / column
        return linear(c.N, c.C, 3 * c.C) + 4 * c.N * line * c.C + linear(c.N, c.C, c.C)

    return flops


def halo(c: Case) -> int:
    b, halo_size = c.opt["block_size"], c.opt["halo_size"]
    win = b + 2 * halo_size  # a query sees its block's (b + 2 halo)^2 window; 2 relative tables of 2 win - 1
    qkv = linear(c.N, c.C, 3 * c.C)  # 1x1 convs q and kv
    return qkv + 4 * c.N * win * win * c.C + 2 * linear(c.N, c.C, 2 * win - 1) + linear(c.N, c.C, c.C)


def ffnified(c: Case) -> int:
    k = c.opt["kernel_size"]
    taps = k * k + (k // 2) ** 2 if k == 7 else k * k  # RepVGGDW: k x k and k//2 x k//2 branches
    return linear(c.N, c.C, c.C) + 2 * 2 * c.N * c.C * taps  # 1x1 conv, two depthwise convs


def sepconv(c: Case) -> int:
    k, hidden = c.opt["kernel_size"], int(c.opt["expansion_ratio"] * c.C)
    return linear(c.N, c.C, hidden) + 2 * c.N * hidden * k * k + linear(c.N, hidden, c.C)  # pw, dw k x k, pw


def hyena(c: Case) -> int:
    n, F = c.h * c.w, c.opt["filter_order"]  # square grid, order 2, four directions
    filter_mlp = linear(c.h, 3, F) + 2 * linear(c.h, F, F) + linear(c.h, F, c.C)  # on the h positions
    if c.opt["long_conv"] == "toeplitz":  # (a1 Tx + a2 Tx^T) v Ty^T + (a3 Tx + a4 Tx^T) v Ty, per channel
        conv = 2 * c.C * (2 * c.h * c.h * c.w + 2 * c.h * c.w * c.w)
    else:  # each FFT on the zero-padded 2h x 2w grid: rfft2 of 4 flips and of K, irfft2 of 4; Linear(4, 1)
        conv = int((4 * c.C + c.C + 4 * c.C) * fft(4 * n, real=True)) + linear(n * c.C, 4, 1)
    return linear(n, c.C, 3 * c.C) + 2 * n * 3 * c.C * 9 + 2 * filter_mlp + conv + linear(n, c.C, c.C)


def hyenapixel(c: Case) -> int:
    n, e, s = c.h * c.w, c.opt["filter_emb_dim"], c.opt["short_kernel_size"]
    f = c.opt["filter_order"] or 2 * e
    kh, kw = (2 * c.h - 1, 2 * c.w - 1) if c.opt["kernel_size"] is None else (c.opt["kernel_size"],) * 2
    taps = kh * kw  # the filter network runs once per forward, on every tap of the kernel
    filter_net = linear(taps, e, f) + linear(taps, f, f) + linear(taps, f, c.C)
    padded = max(2 * c.h, kh) * max(2 * c.w, kw)  # rfft2 of u and of K, irfft2 of the product, per channel
    conv = int(3 * c.C * fft(padded, real=True))
    return linear(n, c.C, 3 * c.C) + 2 * n * 3 * c.C * s * s + filter_net + conv + linear(n, c.C, c.C)

ANALYTIC = {
    "attention": attention,
    "tost": tssa,
    "ponet": ponet,
    "combiner": combiner,
    "fibottention": attention,  # shipped variant=faithful: dense logits times the 0/1 mask
    "xca": xca,
    "feedforward": token_mlp,
    "spectral": global_filter,
    "fnet": fnet,
    "afno": afno,
    "random": random_mixing,
    "pooling": lambda c: 0,  # a 3x3 average: additions only (elementwise, not counted)
    "identity": lambda c: 0,
    "gpsa": gpsa,
    "convit_mhsa": attention,  # the same products as MHSA; no qkv bias, and biases count 0 anyway
    "axial_row": axis_attention("row"),
    "axial_col": axis_attention("col"),
    "axial": lambda c: axis_attention("row")(c) + axis_attention("col")(c),
    "halo": halo,
    "ffnified": ffnified,
    "sepconv": sepconv,
    "hyena": hyena,
    "hyenapixel": hyenapixel,
    "performer": performer,
    "nystrom": nystrom,
    "routing": routing,
}

MIXER_YAMLS = sorted(p.stem for p in (CONF_DIR / "mixer").glob("*.yaml"))


def mixer_options(name: str) -> dict:
    """The shipped yaml's ``mixer`` node, resolved against the default config."""
    return OmegaConf.to_container(compose_config([f"mixer={name}"]).mixer, resolve=True)


def build_mixer(name: str, grid: tuple[int, int], num_prefix: int = 0, **overrides):
    node = {**mixer_options(name), **overrides}
    factory = instantiate(node)
    return factory(dim=WIDTH, layout=TokenLayout(grid=grid, num_prefix=num_prefix)), node


@pytest.mark.parametrize("name", MIXER_YAMLS)
def test_every_mixer_has_an_analytic_flops_formula(name):
    assert name in ANALYTIC, (
        f"conf/mixer/{name}.yaml has no entry in tests/test_flops.py ANALYTIC: add its forward-FLOPs "
        "formula (format at the top of that file)"
    )


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("name", MIXER_YAMLS)
def test_mixer_forward_flops_match_the_analytic_formula(name, grid):
    if name not in ANALYTIC:
        pytest.fail(f"add conf/mixer/{name}.yaml's formula to ANALYTIC in tests/test_flops.py")
    torch.manual_seed(0)
    mixer, options = build_mixer(name, grid)
    case = Case(h=grid[0], w=grid[1], C=WIDTH, opt=options)
    counted = costs.count_module_flops(mixer.eval(), torch.randn(1, case.N, WIDTH))
    expected = ANALYTIC[name](case)
    assert counted == pytest.approx(expected, rel=1e-6, abs=1), (name, grid, counted, expected)


def test_the_formulas_grow_with_the_token_count_as_the_papers_say():
    small, large = (Case(*g, C=WIDTH, opt={"num_heads": 2, "mlp_ratio": 4.0}) for g in GRIDS)
    quadratic = attention(large) - linear(large.N, WIDTH, 4 * WIDTH)
    assert quadratic / (attention(small) - linear(small.N, WIDTH, 4 * WIDTH)) == 16  # 4x tokens
    assert xca(large) / xca(small) == 4 and global_filter(large) / global_filter(small) == pytest.approx(6)


# ---------------------------------------------------------------------------------------------- SDPA
def test_every_sdpa_and_fft_op_of_this_torch_has_a_formula():
    from torch.utils.flop_counter import flop_registry

    for name in costs.FORMULAS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            assert op in flop_registry, name
    # mixerlab's formula counts the CPU's fused attention on every torch, replacing torch's where it has one
    assert "_scaled_dot_product_flash_attention_for_cpu" in costs.FORMULA_SOURCE
    assert flop_registry[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] is not None


def test_sdpa_is_counted_on_the_cpu_forward_and_backward_whatever_the_backend():
    q, k, v = (torch.randn(2, 3, 50, 16, requires_grad=True) for _ in range(3))
    forward = 4 * 2 * 3 * 50 * 50 * 16
    counts = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel([backend]), FlopCounterMode(display=False) as counter:
            out = F.scaled_dot_product_attention(q, k, v)
            fwd = counter.get_total_flops()
            out.sum().backward()
        counts[backend] = (fwd, counter.get_total_flops() - fwd)
    # the CPU's fused kernel and the decomposed math path agree: 2 matmuls forward, 4 backward (model FLOPs:
    # the fused kernel's recomputation of the scores is not counted), on every torch
    assert counts[SDPBackend.FLASH_ATTENTION] == counts[SDPBackend.MATH] == (forward, 2 * forward)


def test_attention_model_flops_do_not_depend_on_the_device_or_the_sdpa_backend():
    overrides = ["data.img_size=32"]
    torch.manual_seed(0)
    model = build_backbone(compose_config(overrides))
    with torch.device("meta"):
        on_meta = build_backbone(compose_config(overrides))
    flops = {costs.count_flops(on_meta, 32, 1)["flops"]}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel([backend]):
            flops.add(costs.count_flops(model, 32, 1)["flops"])
    assert len(flops) == 1
    tokens, c, layers = 64, 64, 4  # 32 px / patch 4, GAP head
    attention_part = layers * 4 * tokens * tokens * c
    assert flops.pop() > attention_part


def test_count_flops_names_the_ops_counted_by_mixerlab_formulas():
    result = costs.count_flops(build_backbone(compose_config(["mixer=spectral"])), 16, 1)
    assert set(result["by_formula"]) == {"_fft_r2c", "_fft_c2r"} & set(costs.REGISTERED)
    if result["by_formula"]:
        assert "_fft_r2c" in result["note"] and "mixerlab.costs" in result["note"]


def test_fft_convention():
    assert costs.fft_flops([8], 8, real=False) == 5 * 8 * 3
    assert costs.fft_flops([4, 4], 3 * 16, real=True) == 3 * 16 * 4 * 5 // 2  # three 16-point real
    assert costs.fft_flops([1], 10, real=True) == 0


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_sparse_fibottention_counts_the_kept_pairs_only(grid):
    # variant=sparse on the CPU (auto = the diagonal backend): the masked pairs are never computed, so the
    # count is the dense formula's N x N term times the masks' kept fraction (custom ops with formulas)
    from mixers import fibottention as fib

    mixer, options = build_mixer("fibottention", grid, variant="sparse")
    case = Case(h=grid[0], w=grid[1], C=WIDTH, opt=options)
    kept = fib.kept_fraction(mixer.offsets, case.N)
    expected = linear(case.N, WIDTH, 4 * WIDTH) + 4 * case.N * case.N * WIDTH * kept
    counted = costs.count_module_flops(mixer.eval(), torch.randn(1, case.N, WIDTH))
    assert mixer.backend_for(torch.zeros(1, device="cpu")) == "diagonal" and 0 < kept < 1
    assert counted == pytest.approx(expected, rel=1e-9)
    with torch.device("meta"):  # model_info counts on the meta device: the ops' fake kernels
        on_meta, _ = build_mixer("fibottention", grid, variant="sparse")
    assert costs.count_module_flops(on_meta.eval(), torch.zeros(1, case.N, WIDTH, device="meta")) == counted


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_hyena_fft_route_counts_its_ffts(grid):
    # mixer.long_conv=fft (the paper's route): the shipped Toeplitz route's matmuls are replaced by FFTs
    mixer, options = build_mixer("hyena", grid, long_conv="fft")
    case = Case(h=grid[0], w=grid[1], C=WIDTH, opt=options)
    counted = costs.count_module_flops(mixer.eval(), torch.randn(1, case.N, WIDTH))
    assert options["long_conv"] == "fft" and counted == pytest.approx(hyena(case), rel=1e-6, abs=1)
    assert counted != hyena(Case(h=grid[0], w=grid[1], C=WIDTH, opt={**options, "long_conv": "toeplitz"}))
