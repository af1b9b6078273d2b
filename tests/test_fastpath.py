"""The fast path changes speed, not results: optimizer kernels, compile, attention kernels, CPU threads."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.optim import create_optimizer_v2

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import weights_sha256
from mixerlab.fastpath import (
    apply_fast_path,
    autocast_for,
    compile_backbone,
    cpu_threads,
    optimizer_impl_kwargs,
    set_sdpa_backends,
)
from mixers.contract import ConfigError


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
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert cpu_threads("auto", num_workers=1) == 3
    assert cpu_threads("auto", num_workers=8) == 1
    assert cpu_threads(None, num_workers=1) is None
    with pytest.raises(ConfigError, match="fastpath.cpu_threads"):
        cpu_threads(0, num_workers=0)


def test_default_fast_path_on_cpu_compiles_nothing_and_sets_threads():
    threads = torch.get_num_threads()
    try:
        cfg = compose_config([])
        applied = apply_fast_path(cfg.fastpath, build_backbone(cfg), num_workers=0)
        assert applied == {"cpu_threads": torch.get_num_threads(), "compiled": False}
    finally:
        torch.set_num_threads(threads)


def test_autocast_follows_the_trainer_precision():
    cpu = torch.device("cpu")
    ctx, scaler = autocast_for("bf16-mixed", cpu)
    with ctx:
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert autocast_for("16-mixed", cpu)[1] is False  # gradient scaling is for CUDA fp16 only
    with pytest.raises(ConfigError, match="trainer.precision"):
        autocast_for("8-true", cpu)
