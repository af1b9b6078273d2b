"""Routing attention: balanced top-w clusters with the self pair masked match a per-cluster loop; k-means
initialises and EMA-updates the centroid buffers; the commitment loss goes out as aux_loss; under DDP every
rank ends with the centroids of the whole global batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mixerlab.build import build_backbone, compose_config
from mixerlab.errors import ConfigError
from mixers.contract import TokenLayout, pop_aux_losses
from mixers.routing import RoutingAttention

GRID = TokenLayout(grid=(4, 4), num_prefix=0)


def heads(mixer: RoutingAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, N, C = x.shape
    h = mixer.num_heads
    return (mixer.qk(x).reshape(B, N, h, -1).transpose(1, 2), mixer.v(x).reshape(B, N, h, -1).transpose(1, 2))


def naive(mixer: RoutingAttention, x: torch.Tensor) -> torch.Tensor:
    B, N, C = x.shape
    qk, v = heads(mixer, x)
    y, count = torch.zeros_like(v), torch.zeros(B, mixer.num_heads, N)
    for b in range(B):
        for head in range(mixer.num_heads):
            for mu in mixer.means[head]:
                members = (F.normalize(qk[b, head], dim=-1) @ mu).topk(mixer.window).indices
                q = qk[b, head, members]
                logits = q @ F.normalize(q, dim=-1).T / q.shape[-1] ** 0.5
                logits = logits - 5e4 * torch.eye(len(members))  # a token does not attend to itself
                y[b, head, members] += logits.softmax(-1) @ v[b, head, members]
                count[b, head, members] += 1
    y = y / count.clamp(min=1)[..., None]
    return mixer.proj(y.transpose(1, 2).reshape(B, N, C))


def test_forward_matches_a_per_cluster_loop():
    torch.manual_seed(0)
    mixer = RoutingAttention(16, GRID, num_heads=2).eval()
    assert mixer.window == 4 and mixer.means.shape == (2, 4, 8)  # round(sqrt(16)) clusters of 4 tokens
    x = torch.randn(3, 16, 16)
    torch.testing.assert_close(mixer(x), naive(mixer, x), atol=1e-5, rtol=1e-5)


def test_first_training_batch_runs_kmeans_then_centroids_follow_an_ema():
    torch.manual_seed(0)
    mixer = RoutingAttention(16, GRID, num_heads=2, ema_decay=0.9)
    twin = RoutingAttention(16, GRID, num_heads=2, ema_decay=0.9)
    twin.load_state_dict(mixer.state_dict())
    x = torch.randn(4, 16, 16)
    mixer.eval()(x)
    assert not mixer.initted  # evaluation does not initialise
    mixer.train()(x)
    assert mixer.initted and torch.allclose(mixer.means.norm(dim=-1), torch.ones(2, 4))
    twin.train()(x)
    assert torch.equal(mixer.means, twin.means)  # the k-means sample is seeded, not global RNG

    qk, _ = heads(mixer, x)
    points = F.normalize(qk, dim=-1).detach().transpose(0, 1).reshape(2, -1, 8)  # (h, B*N, d)
    before = mixer.means.clone()
    assign = (points @ before.transpose(-2, -1)).argmax(-1)
    expected = before.clone()
    for head in range(2):
        for r in range(4):
            members = points[head, assign[head] == r]
            if len(members):
                moved = 0.9 * before[head, r] + 0.1 * F.normalize(members.sum(0), dim=0)
                expected[head, r] = moved / moved.norm()  # back onto the unit sphere
    pop_aux_losses(mixer)
    mixer(x)
    torch.testing.assert_close(mixer.means, expected)
    commitment = 1e-4 * F.mse_loss(F.normalize(qk, dim=-1), before[torch.arange(2)[None, :, None], assign
                                                                     .reshape(2, 4, 16).transpose(0, 1)])
    torch.testing.assert_close(pop_aux_losses(mixer), commitment)


def _ddp_rank(rank: int, world: int, init_file: str, x: torch.Tensor, state: dict, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mixer = RoutingAttention(16, GRID, num_heads=2)
    mixer.load_state_dict(state)
    mixer.train()(x.chunk(world)[rank])  # one EMA update from this rank's half of the batch
    out.put((rank, mixer.means.clone().tolist()))
    dist.destroy_process_group()


def test_under_ddp_every_rank_applies_the_global_batchs_centroid_update(tmp_path):
    torch.manual_seed(0)
    single = RoutingAttention(16, GRID, num_heads=2).train()
    x = torch.randn(4, 16, 16)
    single(x)  # k-means initialisation (and a first update)
    state = {k: v.clone() for k, v in single.state_dict().items()}
    single(x)  # the update from the whole batch
    context = mp.get_context("fork")  # forked ranks skip re-importing torch: the test takes seconds
    out = context.Queue()
    procs = [context.Process(target=_ddp_rank, args=(r, 2, str(tmp_path / "init"), x, state, out))
             for r in range(2)]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    ranks = [torch.tensor(results[0]), torch.tensor(results[1])]
    assert torch.equal(ranks[0], ranks[1])
    torch.testing.assert_close(ranks[0], single.means)
    alone = RoutingAttention(16, GRID, num_heads=2)
    alone.load_state_dict(state)
    alone.train()(x[:2])
    assert not torch.allclose(alone.means, single.means)  # without the all-reduce rank 0 would differ


@pytest.mark.parametrize(
    ("key", "value"),
    [("mixer.num_clusters", 9), ("mixer.num_clusters", 0), ("mixer.ema_decay", 1), ("mixer.commitment", -1)],
)
def test_impossible_options_fail_at_config_time_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_backbone(compose_config(["mixer=routing", f"{key}={value}"]))


def test_centroids_stay_float32_under_bf16_autocast():
    mixer = RoutingAttention(16, GRID, num_heads=2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            out = mixer(torch.randn(2, 16, 16).bfloat16())
    assert out.dtype == torch.bfloat16 and mixer.means.dtype == torch.float32
    torch.testing.assert_close(mixer.means.norm(dim=-1), torch.ones(2, 4))  # renormalised after each step


def naive_ema_step(means: torch.Tensor, points: torch.Tensor, decay: float) -> torch.Tensor:
    """The centroid update written out token by token: each token joins its nearest centroid; a chosen
    centroid moves by the EMA towards its members' mean direction and is rescaled to length 1."""
    new = means.clone()
    for head in range(means.shape[0]):
        members: dict[int, list[torch.Tensor]] = {}
        for point in points[head]:
            nearest = max(range(means.shape[1]), key=lambda r: float(point @ means[head, r]))
            members.setdefault(nearest, []).append(point)
        for r, chosen in members.items():
            total = torch.stack(chosen).sum(0)
            moved = decay * means[head, r] + (1 - decay) * total / total.norm()
            new[head, r] = moved / moved.norm()
    return new


def test_centroids_stay_unit_length_and_match_a_naive_update_over_many_steps():
    torch.manual_seed(1)
    mixer = RoutingAttention(16, GRID, num_heads=2, ema_decay=0.5).train()  # fast EMA: large moves
    mixer(torch.randn(2, 16, 16))  # k-means initialisation and a first update
    for _ in range(4):
        x = torch.randn(2, 16, 16)
        qk, _ = heads(mixer, x)
        points = F.normalize(qk, dim=-1).detach().transpose(0, 1).reshape(2, -1, 8)
        expected = naive_ema_step(mixer.means.clone(), points, 0.5)
        mixer(x)
        torch.testing.assert_close(mixer.means, expected)
    # without the renormalisation an EMA of spread unit vectors would be shorter than 1 after these steps
    torch.testing.assert_close(mixer.means.norm(dim=-1), torch.ones(2, 4))
