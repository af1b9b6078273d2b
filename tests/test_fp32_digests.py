"""fp32 proxy runs keep the exact weights they had before batches were made a batch at a time, in a
background thread, or from cheaper draws: the same seed gives the same ``weights_sha256``.

The reference digests were computed by running the code at 5779ee1 (the branch point, before any of it;
`git archive 5779ee1 | tar -x -C /tmp/ref`, then the commands below from /tmp/ref) on the 2-core
development machine (x86-64, torch 2.14.1, numpy 2.4.6). Float results depend on the CPU's kernels, so
the pin holds on a CPU like it: one thread and torch's own Linear keep it independent of core count and
vendor switches (fastpath.cpu_threads=1, fastpath.cpu_linear=aten).
"""

from __future__ import annotations

import pytest
import torch

COMMON = (
    "data.val_samples=256",
    "trainer.max_epochs=2",
    "fastpath.cpu_threads=1",
    "fastpath.cpu_linear=aten",
    "callbacks.progress.refresh_rate=0",
)
RUNS = {  # run -> (overrides, weights_sha256 at 5779ee1)
    "odd_one_out": (
        ("experiment=proxy_odd_one_out", "mixer=spectral", "data.samples_per_epoch=1024"),
        "ea578d3687a2352d0aeeef6a20a4f7d0765651113b03898a4048e6c4f1370753",
    ),
    "marker": (
        ("experiment=proxy_marker", "mixer=attention", "data.samples_per_epoch=1024"),
        "06b81322376ddacadff16b8efebe2db67de2051ed4bf35684d0bb2b26bd3409e",
    ),
    "pathfinder": (
        ("experiment=proxy_pathfinder", "mixer=spectral", "data.train_samples=1024"),
        "9ea2a02707f0910711d269e6d73575a323ea890bbd23f9aea1939eed8da83871",
    ),
}
REFERENCE_CPU = "AVX512"  # torch.backends.cpu.get_cpu_capability() where the references were computed


def needs_reference_cpu() -> None:
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != REFERENCE_CPU:
        pytest.skip(f"reference digests were computed on a {REFERENCE_CPU} CPU, this one is {capability}: "
                    "recompute them with the code at 5779ee1 (see the module docstring)")


@pytest.mark.parametrize(
    ("run", "extra"),
    [
        ("odd_one_out", ()),
        # the background thread once, on Pathfinder; tests/test_batch_pipeline.py shows its batches are the
        # per-sample path's on every task, so a second trained run with it adds time, not evidence
        pytest.param("marker", (), marks=pytest.mark.slow),
        pytest.param("pathfinder", ("data.background_batches=2",), marks=pytest.mark.slow),
    ],
)
def test_fp32_proxy_run_has_the_weights_digest_of_the_branch_point(train_run, tmp_path, run, extra):
    needs_reference_cpu()
    overrides, expected = RUNS[run]
    _, summary = train_run(*overrides, *COMMON, *extra, env={"MIXERLAB_CACHE": str(tmp_path / "cache")})
    assert summary["status"] == "completed"
    assert summary["weights_sha256"] == expected
