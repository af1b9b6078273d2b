"""Typed configs that fail fast (mixerlab/schema.py), zero-step runs, and worker counts (data/workers.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import pytest
from omegaconf import OmegaConf

from data.workers import available_cores, decoder_threads, loader_workers
from mixerlab.build import CONF_DIR, compose_config
from mixerlab.errors import ConfigError
from mixerlab.schema import check, iter_targets, matches, validate
from mixerlab.signatures import REPO, imported_signature, static_signature

# (overrides, what the error must name). Each fails before anything is built.
INVALID = [
    (["recipe.lr=abc"], "recipe.lr='abc'"),
    (["seed=abc"], "seed='abc'"),
    (["data.img_size=0"], "data.img_size=0"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["recipe.lrr=1"], "recipe.lrr"),  # Hydra refuses a key the config does not have
    (["+recipe.lrr=1"], "recipe.lrr"),  # ... and the schema one added with +
    (["+mixer.nonexistent=1"], "mixer.nonexistent"),
    (["trainer.max_epochs=-5"], "trainer.max_epochs=-5"),
    (["backbone.block.style=sideways"], "backbone.block.style='sideways'"),
    (["recipe.decay=linear"], "recipe.decay='linear'"),
    (["mixer.qkv_bias=maybe"], "mixer.qkv_bias='maybe'"),
    (["mixer=fibottention", "mixer.variant=approximate"], "mixer.variant='approximate'"),
    (["mixer=afno", "mixer.num_blocks=0"], "mixer.num_blocks=0"),
    (["mixer=spectral", "mixer.filter_size=big"], "mixer.filter_size='big'"),
    (["data.augment.hflip=1.5"], "data.augment.hflip=1.5"),
    (["backbone.drop_path_rate=-0.1"], "backbone.drop_path_rate=-0.1"),
    (["data.num_workers=-2"], "data.num_workers=-2"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["fastpath.cpu_threads=0"], "fastpath.cpu_threads=0"),
    (["recipe.warmup_epochs=-1"], "recipe.warmup_epochs=-1"),
    (["backbone.head=avg"], "backbone.head='avg'"),
    (["+backbone.block.gate=true"], "backbone.block.gate"),
    (["recipe.mixup.prob=2"], "recipe.mixup.prob=2"),
    # checked in the second pass, against constructors of other packages (imported)
    (["+recipe.mixup.alpha=1"], "recipe.mixup.alpha"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch"),
    (["data=imagenet_folder", "data.crop_pct=1.5"], "data.crop_pct=1.5"),
    # found by tests/test_fuzz_config.py: a list where Lightning takes a path ended in a raw TypeError
    (["++trainer.default_root_dir=[1,2]"], "trainer.default_root_dir=[1, 2]"),
    (["trainer.strategy=[ddp]"], "trainer.strategy=['ddp']"),
]
# run as a user would, as `python train.py <override>`: the four and one of each other kind
THROUGH_TRAIN_PY = [0, 1, 2, 3, 4, 6, 7, 8, 10]


@pytest.mark.parametrize(("overrides", "key"), INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_an_invalid_override_fails_naming_its_key(overrides, key):
    start = time.perf_counter()
    with pytest.raises(Exception) as caught:  # ConfigError from the schema, Hydra's error for unknown keys
        validate(compose_config(overrides))
    assert time.perf_counter() - start < 10
    assert key in str(caught.value)
    if isinstance(caught.value, ConfigError):
        assert ":" in str(caught.value).split(key, 1)[1]  # followed by what is allowed


def test_the_fast_pass_catches_these_without_importing_torch_or_lightning():
    code = (
        "import sys; from mixerlab.config import register_resolvers; register_resolvers()\n"
        "from hydra import compose, initialize_config_dir\n"
        "from mixerlab.schema import check\n"
        f"with initialize_config_dir(config_dir={str(CONF_DIR)!r}, version_base='1.3'):\n"
        "    cfg = compose(config_name='train', overrides=['recipe.lr=abc', 'mixer.qkv_bias=2'],"
        " return_hydra_config=True)\n"
        "from hydra.core.hydra_config import HydraConfig; HydraConfig.instance().set_config(cfg)\n"
        "problems = check(cfg)\n"
        "print(len(problems), [m for m in ('torch', 'lightning', 'timm') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "[]"], out.stderr[-2000:]


def _train_py(overrides: list[str], run_dir) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    return proc, time.perf_counter() - start


def test_train_py_fails_in_seconds_with_one_clear_line_per_bad_key(tmp_path):
    cases = [INVALID[i] for i in THROUGH_TRAIN_PY]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _train_py(c[1][0], tmp_path / str(c[0])), enumerate(cases)))
    for (overrides, key), (proc, elapsed) in zip(cases, results, strict=True):
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, overrides
        assert key in output, (overrides, output[-2000:])
        assert "Traceback" not in output, output[-2000:]
        # before any expensive work: nothing written where the run would go, and seconds, not a run's minutes
        # (the bound is loose because another test may share the cores)
        run_dir = tmp_path / str(cases.index((overrides, key)))
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists(), overrides
        assert elapsed < 30, (overrides, elapsed)


def test_model_info_validates_too():
    from scripts.model_info import model_info

    with pytest.raises(ConfigError, match=r"backbone.depth=0: an integer >= 1"):
        model_info(["backbone.depth=0"])


def test_all_problems_are_listed_at_once():
    problems = check(compose_config(["recipe.lr=-1", "data.batch_size=0", "backbone.head=avg"]))
    assert [p.split("=")[0] for p in problems] == ["backbone.head", "data.batch_size", "recipe.lr"]


def test_an_interpolated_value_says_where_it_came_from():
    problems = check(compose_config(["seed=abc"]))
    assert problems[0] == "seed='abc': an integer >= 0"
    assert any(p.startswith("data.seed='abc' (from ${seed}): int") for p in problems[1:]), problems


# ---------------------------------------------------------------- every shipped config validates
def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


SHIPPED = [f"experiment={e}" for e in _options("experiment")] + [f"mixer={m}" for m in _options("mixer")] + [
    f"{g}={o}" for g in ("data", "backbone", "recipe", "trainer", "logger") for o in _options(g)]


@pytest.mark.parametrize("choice", SHIPPED)
def test_every_shipped_config_composes_and_validates(choice):
    assert check(compose_config([choice])) == []


def test_the_static_reader_agrees_with_inspect_on_every_shipped_target():
    targets = set()
    for choice in SHIPPED:
        targets |= set(iter_targets(compose_config([choice])))
    targets |= {"mixerlab.backbone.BlockSpec", "data.transforms.AugmentConfig",
                "data.imagenet_ffcv.ProgressiveResolution"}
    local = sorted(t for t in targets if (REPO / t.split(".")[0]).is_dir())
    assert len(local) >= 15
    for target in local:
        static, imported = static_signature(target), imported_signature(target)
        assert set(static.params) == set(imported.params), target
        assert static.open == imported.open, target


# ---------------------------------------------------------------- signatures drive the schema
class ToyMixer:
    """A mixer the schema has never heard of: its signature alone says what its config may hold."""

    def __init__(self, dim: int, layout, width: int = 2, mode: Literal["mean", "max"] = "mean",
                 gains: list[float] | None = None, layer_index: int = 0, num_layers: int = 1) -> None:
        self.width = width


def _toy(**options) -> list[str]:
    cfg = OmegaConf.create({"mixer": {"_target_": f"{__name__}.ToyMixer", "_partial_": True, **options}})
    return check(cfg)


def test_a_new_mixer_is_validated_from_its_signature_alone():
    assert _toy(width=3, mode="max", gains=[1.0, 2]) == []
    assert _toy(width="wide") == [f"mixer.width='wide': int (the type of {__name__}.ToyMixer's width)"]
    assert "one of" not in _toy(mode="min")[0] and "Literal['mean', 'max']" in _toy(mode="min")[0]
    assert "mixer.gains=[1, 'x']" in _toy(gains=[1, "x"])[0]
    assert _toy(depth=2)[0] == f"mixer.depth=2: unknown key; {__name__}.ToyMixer takes: width, mode, gains"
    assert "set by the code" in _toy(dim=8)[0]
    assert "mixer.num_heads=0: an integer >= 1" in _toy(num_heads=0)[0]  # a table rule, any mixer


@pytest.mark.parametrize(
    ("value", "annotation", "ok"),
    [
        (3, "int", True), (True, "int", False), (3, "float", True), ("3", "float", False),
        (None, "int | None", True), ([14, 14], "list[int] | tuple[int, int] | None", True),
        ([14, "a"], "list[int] | tuple[int, int] | None", False), ((1, 2, 3), "tuple[int, int]", False),
        ([0.1, 1], "Sequence[float]", True), ({"a": 1}, "Mapping | None", True), ([1], "Mapping", False),
        ("b", "Literal['a', 'b']", True), ("c", "Literal['a', 'b']", False), ("x", "TokenLayout", True),
        (5, "Optional[Union[int, float]]", True), ("s", "Optional[Union[int, float]]", False),
    ],
)
def test_annotations_are_read_as_types(value, annotation, ok):
    assert matches(value, annotation) is ok


# ---------------------------------------------------------------- zero optimizer steps
def test_a_batch_larger_than_the_training_set_fails_before_fit_saying_why(tmp_path):
    from data.fake_imagenet import FakeImageNetDataModule

    dm = FakeImageNetDataModule(root=str(tmp_path / "tiny"), num_classes=2, img_size=32, batch_size=8,
                                fixture={"train_per_class": 3, "val_per_class": 1}, num_workers=0)
    with pytest.raises(ConfigError) as caught:
        dm.check_optimizer_steps(world_size=1)
    message = str(caught.value)
    assert "6 training images" in message and "data.batch_size=8" in message and "drop_last" in message
    assert "at most 6" in message
    dm.batch_size = 6
    assert dm.check_optimizer_steps(world_size=1) == 1
    with pytest.raises(ConfigError, match=r"over 2 processes \(3 each\).*fewer devices"):
        dm.check_optimizer_steps(world_size=2)
    with pytest.raises(ConfigError, match="trainer.limit_train_batches=0.5 keeps 0 of the 1"):
        dm.check_optimizer_steps(world_size=1, limit_train_batches=0.5)


def test_train_py_refuses_a_run_that_would_take_no_step(tmp_path):
    proc, _ = _train_py(["data.batch_size=2000"], tmp_path / "run")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "1437 training images do not fill one batch of data.batch_size=2000" in output
    assert "drop_last" in output and "Traceback" not in output
    assert not (tmp_path / "run" / "summary.json").exists() or '"completed"' not in (
        tmp_path / "run" / "summary.json").read_text()


# ---------------------------------------------------------------- worker counts
def test_auto_workers_leave_one_core_to_the_model_and_never_exceed_the_cores():
    assert [loader_workers("auto", cores=c) for c in (1, 2, 16)] == [0, 1, 15]
    assert loader_workers(None, cores=4) == 3
    with pytest.warns(UserWarning, match=r"data.num_workers=8 but this process has 2 CPU core\(s\)"):
        assert loader_workers(8, cores=2) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loader_workers(2, cores=2) == 2
    assert [decoder_threads("auto", cores=c) for c in (1, 2, 16)] == [1, 1, 15]
    assert decoder_threads("auto", cores=16, limit=4) == 4
    with pytest.raises(ConfigError, match=r"data.num_workers=8: FFCV decodes in 1 to 2 threads"):
        decoder_threads(8, cores=2)
    with pytest.raises(ConfigError, match="data.num_workers=0"):
        decoder_threads(0, cores=2)


def test_the_folder_pipelines_shipped_default_is_what_the_machine_has(tmp_path):
    from data.fake_imagenet import write_fake_imagenet
    from mixerlab.build import build_datamodule

    write_fake_imagenet(tmp_path / "tree", classes=3)
    cfg = compose_config(["data=imagenet_folder", f"data.root={tmp_path / 'tree'}", "data.num_classes=3"])
    assert cfg.data.num_workers == "auto"
    dm = build_datamodule(cfg)
    assert dm.num_workers == max(0, available_cores() - 1) < available_cores() + 1


@pytest.mark.ffcv
def test_the_ffcv_pipelines_shipped_default_decodes_within_the_cores(tmp_path):
    pytest.importorskip("ffcv")
    import numba

    from data.fake_imagenet import write_fake_imagenet
    from data.ffcv_writer import write_betons
    from mixerlab.build import build_datamodule

    write_fake_imagenet(tmp_path / "tree", classes=2, train_per_class=4, val_per_class=2)
    write_betons(tmp_path / "tree", tmp_path / "betons", max_resolution=64, num_workers=1)
    overrides = ["data=imagenet_ffcv", f"data.root={tmp_path / 'betons'}", "data.num_classes=2",
                 "data.img_size=32", "data.batch_size=2"]
    cfg = compose_config(overrides)
    assert cfg.data.num_workers == "auto"
    dm = build_datamodule(cfg)
    assert 1 <= dm.num_workers <= min(available_cores(), numba.config.NUMBA_NUM_THREADS)
    images, labels = next(iter(dm.train_dataloader()))  # numba accepts the thread count
    assert images.shape[0] == 2
    too_many = available_cores() + 1
    with pytest.raises(ConfigError, match=f"data.num_workers={too_many}: FFCV decodes in 1 to"):
        build_datamodule(compose_config([*overrides, f"data.num_workers={too_many}"]))
