"""MetaMixer's FFNified attention: the explicit conv sequence of FFNet's Token_Mixer, CLS pass-through."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.backbone import count_parameters
from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import weights_sha256
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, fuse_for_inference
from mixers.ffnified import FFNified, RepVGGDW

LAYOUT = TokenLayout(grid=(4, 4), num_prefix=1)


def bn(x: torch.Tensor, norm: torch.nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


def dw(x: torch.Tensor, m: torch.nn.Module, k: int) -> torch.Tensor:
    C = x.shape[1]
    if k == 3:
        return F.conv2d(x, m.weight, m.bias, padding=1, groups=C)
    big = bn(F.conv2d(x, m.conv.c.weight, padding=3, groups=C), m.conv.bn)
    return big + bn(F.conv2d(x, m.conv1.c.weight, padding=1, groups=C), m.conv1.bn)  # RepVGGDW: 7x7 + 3x3


@pytest.mark.parametrize("k", [3, 7])
def test_ffnified_is_the_explicit_conv_sequence_and_passes_cls_through(k):
    torch.manual_seed(0)
    m = FFNified(8, LAYOUT, kernel_size=k)
    for norm in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2)
        torch.nn.init.normal_(norm.weight)
    m.eval()
    x = torch.randn(2, 17, 8)
    out = m(x)
    grid = x[:, 1:].transpose(1, 2).reshape(2, 8, 4, 4)
    y = bn(F.conv2d(grid, m.fc.c.weight), m.fc.bn)  # BN(Conv1x1(x))
    y = dw(F.gelu(dw(y, m.conv1, k)), m.conv2, k)
    assert torch.equal(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1:], y.flatten(2).transpose(1, 2))


@pytest.mark.parametrize(("k", "per_channel"), [(3, 22), (7, 126)])
def test_ffnified_has_the_papers_parameter_count(k, per_channel):
    assert count_parameters(FFNified(64, LAYOUT, kernel_size=k)) == 64 * 64 + per_channel * 64


def test_batchnorm_statistics_are_state_and_training_updates_them():
    model = build_backbone(compose_config(["mixer=ffnified", "mixer.kernel_size=7"]))
    keys = model.state_dict().keys()
    assert "blocks.0.mixer.fc.bn.running_mean" in keys and "blocks.0.mixer.conv1.conv1.bn.running_var" in keys
    before = model.blocks[0].mixer.fc.bn.running_mean.clone()
    model.train()(torch.randn(4, 1, 16, 16))
    assert not torch.equal(before, model.blocks[0].mixer.fc.bn.running_mean)


def test_ffnified_starts_from_ffnets_init_and_names_a_bad_kernel():
    model = build_backbone(compose_config(["mixer=ffnified"]))
    conv = model.blocks[0].mixer.conv1
    assert conv.weight.std() < 0.03 and torch.equal(conv.bias, torch.zeros(64))  # trunc-normal 0.02
    with pytest.raises(ConfigError, match=r"mixer\.kernel_size=5"):
        build_backbone(compose_config(["mixer=ffnified", "mixer.kernel_size=5"]))


def test_ffnified_at_224_16_with_the_large_kernel():
    m = FFNified(32, TokenLayout(grid=(14, 14), num_prefix=1), kernel_size=7)
    x = torch.randn(2, 197, 32)
    out = m(x)
    assert out.shape == x.shape and torch.equal(out[:, 0], x[:, 0])


def test_weights_digest_covers_the_batchnorm_step_counter():
    model = build_backbone(compose_config(["mixer=ffnified"]))
    before = weights_sha256(model)
    model.blocks[0].mixer.fc.bn.num_batches_tracked += 1  # a 0-d long buffer
    assert weights_sha256(model) != before


@pytest.mark.parametrize(("k", "k2"), [(7, 7), (3, 7), (3, 3)])
def test_fused_deployment_form_gives_the_branches_outputs_in_eval_mode(k, k2):
    torch.manual_seed(0)
    kernels = [f"mixer.kernel_size={k}", f"mixer.kernel_size2={k2}"]
    model = build_backbone(compose_config(["mixer=ffnified", *kernels]))
    model.train()
    for _ in range(3):  # running statistics away from their initial values
        model(torch.randn(8, 1, 16, 16))
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    model.eval()
    fused = fuse_for_inference(model)
    assert model.training is False and any(isinstance(m, RepVGGDW) for m in model.modules()) == (7 in (k, k2))
    assert not any(isinstance(m, (RepVGGDW, torch.nn.BatchNorm2d)) for m in fused.blocks.modules())
    mixer = fused.blocks[0].mixer
    for conv in (mixer.fc, mixer.conv1, mixer.conv2):  # one conv with bias per layer, 7x7 where RepVGGDW was
        assert type(conv) is torch.nn.Conv2d and conv.bias is not None
    assert mixer.conv1.kernel_size == (k, k) and mixer.conv2.kernel_size == (k2, k2)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)
    assert count_parameters(fused) < count_parameters(model)


def test_training_keeps_the_branches():
    model = build_backbone(compose_config(["mixer=ffnified", "mixer.kernel_size=7"]))
    fuse_for_inference(model)  # a fused copy: the training model is untouched
    mixer = model.blocks[0].mixer
    assert model.training and isinstance(mixer.conv1, RepVGGDW)
    assert isinstance(mixer.fc.bn, torch.nn.BatchNorm2d)
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    assert mixer.conv1.conv1.c.weight.grad is not None  # the 3x3 branch trains as its own kernel
