"""The fast path changes speed, not results: optimizer kernels, compile, attention kernels, CPU threads."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.optim import create_optimizer_v2

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import weights_sha256
from mixerlab.errors import ConfigError
from mixerlab.fastpath import (
    apply_fast_path,
    autocast_for,
    compile_backbone,
    cpu_threads,
    optimizer_impl_kwargs,
    set_sdpa_backends,
    wants_onednn_linear,
)
from mixerlab.onednn_linear import OneDNNLinear


def test_auto_picks_the_fused_adamw_kernel_and_user_opt_kwargs_win():
    assert optimizer_impl_kwargs("auto", "adamw", cuda=False) == {"fused": True}
    assert optimizer_impl_kwargs("loop", "adamw") == {"foreach": False}
    assert optimizer_impl_kwargs("auto", "lamb", cuda=True) == {"foreach": True}
    assert optimizer_impl_kwargs("auto", "adamw", explicit={"foreach": True}) == {}
    with pytest.raises(ConfigError, match="recipe.opt_impl"):
        optimizer_impl_kwargs("fast", "adamw")
    with pytest.raises(ConfigError, match="no fused kernel"):
        optimizer_impl_kwargs("fused", "lamb")


def test_fused_adamw_takes_the_same_steps_as_the_per_tensor_loop():
    torch.manual_seed(0)
    model = build_backbone(compose_config([]))
    twin = copy.deepcopy(model)
    opts = [
        create_optimizer_v2(
            m, opt="adamw", lr=1e-2, weight_decay=0.05, **optimizer_impl_kwargs(impl, "adamw")
        )
        for m, impl in ((model, "fused"), (twin, "loop"))
    ]
    assert opts[0].defaults["fused"] and not opts[1].defaults["foreach"]
    images, labels = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    for m, opt in zip((model, twin), opts, strict=True):
        torch.nn.functional.cross_entropy(m(images), labels).backward()
        opt.step()
    # one step from identical gradients: the kernels differ only in rounding (later steps then drift apart
    # where Adam divides tiny gradients by their own tiny RMS, as any two summation orders would)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_compiled_backbone_keeps_its_state_dict_keys_and_digest():
    model = build_backbone(compose_config([]))
    keys, digest = list(model.state_dict()), weights_sha256(model)
    assert compile_backbone(model, {"enabled": True, "mode": "default"})
    assert model._compiled_call_impl is not None  # compiled lazily on the first call
    assert list(model.state_dict()) == keys and weights_sha256(model) == digest
    assert not compile_backbone(build_backbone(compose_config([])), {"enabled": False})
    with pytest.raises(ConfigError, match="fastpath.compile.mode"):
        compile_backbone(model, {"enabled": True, "mode": "fastest"})


def test_sdpa_backend_choice_steers_the_cpu_kernel():
    q = torch.randn(1, 2, 5, 8)
    try:
        set_sdpa_backends(["math"])
        with torch.profiler.profile() as prof:
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        assert any("attention_math" in e.key for e in prof.key_averages())
    finally:
        set_sdpa_backends(["flash", "efficient", "cudnn", "math"])
    with pytest.raises(ConfigError, match="fastpath.sdpa_backends"):
        set_sdpa_backends(["flashy"])


def test_cpu_threads_leave_a_core_per_data_worker(monkeypatch):
    monkeypatch.setattr("data.workers.available_cores", lambda: 4)  # the cores this process may use
    assert cpu_threads("auto", num_workers=1) == 3
    assert cpu_threads("auto", num_workers=8) == 1
    assert cpu_threads(None, num_workers=1) is None
    with pytest.raises(ConfigError, match="fastpath.cpu_threads"):
        cpu_threads(0, num_workers=0)


def test_cpu_threads_auto_keeps_to_the_cores_a_parallel_launcher_gave_the_job(monkeypatch):
    monkeypatch.setattr("data.workers.available_cores", lambda: 16)
    monkeypatch.setenv("MIXERLAB_CORES_PER_JOB", "4")  # hydra/launcher=local_parallel: 4 jobs x 4 cores
    assert cpu_threads("auto", num_workers=1) == 3
    assert cpu_threads("auto", num_workers=0) == 4
    assert cpu_threads(2, num_workers=0) == 2  # an explicit number is the user's choice
    monkeypatch.setenv("MIXERLAB_CORES_PER_JOB", "64")  # never more than the affinity mask allows
    assert cpu_threads("auto", num_workers=0) == 16
    monkeypatch.setenv("MIXERLAB_CORES_PER_JOB", "x")
    with pytest.raises(ConfigError, match="MIXERLAB_CORES_PER_JOB"):
        cpu_threads("auto", num_workers=0)


def test_default_fast_path_on_cpu_compiles_nothing_and_sets_threads(monkeypatch):
    threads = torch.get_num_threads()
    cfg = compose_config([])
    try:
        for vendor, onednn in (("AuthenticAMD", True), ("GenuineIntel", False)):
            monkeypatch.setattr("mixerlab.fastpath.cpu_vendor", lambda v=vendor: v)
            model = build_backbone(cfg)
            applied = apply_fast_path(cfg.fastpath, model, num_workers=0)
            assert applied["cpu_threads"] == torch.get_num_threads() and applied["compiled"] is False
            assert ("onednn_linear_layers" in applied) is onednn
            assert any(isinstance(m, OneDNNLinear) for m in model.modules()) is onednn
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ConfigError, match="fastpath.cpu_linear"):
        wants_onednn_linear("mkl", compiled=False)
    with pytest.raises(ConfigError, match="choose one"):
        wants_onednn_linear("onednn", compiled=True)


def test_autocast_follows_the_trainer_precision():
    cpu = torch.device("cpu")
    ctx, scaler = autocast_for("bf16-mixed", cpu)
    with ctx:
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert autocast_for("16-mixed", cpu)[1] is False  # gradient scaling is for CUDA fp16 only
    with pytest.raises(ConfigError, match="trainer.precision"):
        autocast_for("8-true", cpu)


def test_digits_without_the_noop_color_jitter_draw_identical_samples():
    from data.digits import ArrayImages, digit_images
    from data.sampling import SeededTransformDataset
    from data.transforms import AugmentConfig, train_transform

    images, labels = digit_images()
    source = ArrayImages(images[:8], labels[:8])
    base = dict(scale=(0.85, 1.0), ratio=(0.9, 1.1), hflip=0.0, auto_augment=None, re_prob=0.0)
    jitter0, no_jitter = (
        SeededTransformDataset(
            source, train_transform(16, (0.5,), (0.5,), AugmentConfig(color_jitter=cj, **base))
        )
        for cj in (0.0, None)
    )
    for key in [(i, 1000 + i) for i in range(8)]:
        torch.testing.assert_close(jitter0[key][0], no_jitter[key][0], rtol=0, atol=0)


def test_onednn_linear_matches_nn_linear_forward_and_backward():
    torch.manual_seed(0)
    ref = torch.nn.Linear(24, 40)
    fast = copy.deepcopy(ref)
    fast.__class__ = OneDNNLinear
    x = torch.randn(3, 7, 24)
    xs = (x.clone().requires_grad_(), x.clone().requires_grad_())
    grad = torch.randn(3, 7, 40)
    for layer, inp in zip((ref, fast), xs, strict=True):
        layer(inp).backward(grad)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps nn.Linear's own (oneDNN bf16) path
        assert fast(x).dtype == torch.bfloat16


def test_onednn_swap_keeps_parameter_names_digest_and_flop_count():
    from mixerlab.costs import count_flops
    from mixerlab.onednn_linear import use_onednn_linear

    model = build_backbone(compose_config([]))
    keys, digest, flops = list(model.state_dict()), weights_sha256(model), count_flops(model, 16, 1)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert use_onednn_linear(model) == linears > 0
    assert list(model.state_dict()) == keys and weights_sha256(model) == digest
    assert count_flops(model, 16, 1) == flops  # the oneDNN op has a FLOP formula too
