"""A training step's peak tensor memory (mixerlab.costs.step_memory): per run, per mixer, and harmless."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerlab.build import build_backbone, compose_config
from mixerlab.costs import LiveTensorMemory, step_memory, weights_sha256


def measure(mixer: str, img_size: int = 64, batch: int = 8, model=None) -> dict:
    if model is None:
        torch.manual_seed(0)
        model = build_backbone(compose_config([f"mixer={mixer}", f"data.img_size={img_size}"]))
    images = torch.zeros(batch, 1, img_size, img_size)
    labels = torch.zeros(batch, dtype=torch.long)
    return step_memory(model, images, labels, F.cross_entropy, lambda m: torch.optim.AdamW(m.parameters()))


def test_attention_needs_the_most_memory_at_256_tokens():
    # 64 px / patch 4 = 256 tokens of width 64: attention's per-head N x N work outweighs the filters'
    memory = {mixer: measure(mixer)["step_memory_mb"] for mixer in ("attention", "spectral", "pooling")}
    assert memory["attention"] > memory["spectral"] > memory["pooling"] > 0, memory


def test_step_memory_covers_weights_gradients_and_adam_state_and_names_its_method():
    model = build_backbone(compose_config(["mixer=identity"]))
    params_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    result = measure("identity", img_size=16, batch=2, model=model)
    assert result["step_memory_mb"] >= 4 * params_mb  # weights, gradients, exp_avg, exp_avg_sq
    assert result["step_memory_batch"] == 2
    assert result["step_memory_method"].startswith("cpu: peak of live tensor storages")


def test_memory_grows_with_the_batch():
    assert measure("attention", img_size=32, batch=16)["step_memory_mb"] > \
        measure("attention", img_size=32, batch=4)["step_memory_mb"]


def test_measuring_changes_neither_the_weights_nor_the_random_stream():
    torch.manual_seed(1)
    model = build_backbone(compose_config(["backbone.drop_path_rate=0.1"]))  # the step draws random numbers
    digest = weights_sha256(model)
    state = torch.get_rng_state()
    measure("attention", img_size=16, batch=4, model=model)
    assert weights_sha256(model) == digest and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), state)


def test_live_tensor_memory_counts_live_storages_once_and_frees_them():
    with LiveTensorMemory(torch.device("cpu")) as tracker:
        a = torch.zeros(2**18)  # 1 MiB
        view = a[10:]  # shares a's storage
        b = torch.zeros(2**19)  # 2 MiB
        del a, view, b
        c = torch.zeros(2**18)
    assert tracker.peak == 3 * 2**20 and tracker.current == c.untyped_storage().nbytes()


@pytest.mark.parametrize("mixer", ["attention", "pooling"])
def test_model_info_prints_the_step_memory_at_its_stated_batch(mixer):
    from scripts.model_info import model_info

    info = model_info([f"mixer={mixer}", "data.img_size=32"], memory_batch=4)
    assert info["step_memory_batch"] == 4 and info["step_memory_mb"] > 0 and "step_memory_method" in info
