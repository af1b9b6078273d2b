"""Bad input found by a machine: random overrides of the composed config either start a run or stop early with
an error that names the key, never with a traceback.

Each draw picks group choices (mixer, data, backbone, recipe, experiment, trainer) and one to three keys of
the config they compose (the default config's keys, every mixer's and every data source's options), and
assigns each a value of any type: integers (zero, negative, huge), floats (nan, inf), booleans, null,
strings, lists and dicts, or a group option that does not exist. It then does what ``train.py`` does before
the first step (compose, validate, build the backbone, load ``init.checkpoint``, build the data module,
check its batches, build the recipe, the callbacks and the Trainer) and accepts only:

    started      every step above passed
    ConfigError  (mixerlab's one-line error; train.py prints it without a traceback) naming the key
    Hydra error  (an override Hydra refuses; printed without a traceback) naming the key

within 10 seconds for a refusal. Anything else is what a user would see as a raw traceback.

CI runs a fixed, small set of draws (``derandomize``); ``make fuzz`` runs many more with fresh randomness
(``MIXERLAB_FUZZ_EXAMPLES``, ``MIXERLAB_FUZZ_RANDOM=1``). docs/reliability.md records what it found.
"""

from __future__ import annotations

import os
import re
import time
from functools import cache
from pathlib import Path

import pytest
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from mixerlab.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
EXAMPLES = int(os.environ.get("MIXERLAB_FUZZ_EXAMPLES", "25"))
FRESH = os.environ.get("MIXERLAB_FUZZ_RANDOM") == "1"
REFUSAL_SECONDS = 10.0
# Group choices a draw may make. Data sources that need files on disk (ImageNet folders, FFCV betons) stay
# in: they must refuse with a ConfigError naming the missing root, not start reading.
GROUPS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
          for group in ("mixer", "data", "backbone", "recipe", "trainer", "experiment")}
# Keys whose values only steer Hydra itself or name where output goes; fuzzing them tests Hydra, not us.
SKIPPED_KEY = re.compile(r"^(hydra|callbacks\.checkpoint\.dirpath|logger\.)|_target_$|_partial_$")


def _leaves(node, prefix: str = "") -> list[str]:
    if OmegaConf.is_dict(node):
        out = []
        for key in node.keys():
            out += _leaves(node._get_node(key), f"{prefix}{key}.")
        return out
    return [prefix[:-1]]


@cache
def config_of(choices: tuple[str, ...]):
    """The config these group choices compose; the default one where Hydra refuses them."""
    from mixerlab.build import compose_config

    try:
        return compose_config(list(choices))
    except HydraException:
        return compose_config([])


@cache
def keys_of(choices: tuple[str, ...]) -> tuple[str, ...]:
    """The keys of the config that these group choices compose (Hydra's keys, without its own)."""
    cfg = config_of(choices)
    body = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    return tuple(sorted(k for k in _leaves(body) if not SKIPPED_KEY.search(k)))


@cache
def key_space() -> tuple[str, ...]:
    """Every key of the default config, plus every option of every mixer and data source: the keys an
    error may name."""
    choices = [(), *((f"mixer={m}",) for m in GROUPS["mixer"]), *((f"data={d}",) for d in GROUPS["data"])]
    return tuple(sorted({key for c in choices for key in keys_of(c)}))


def _render(value) -> str:
    """A Python value as Hydra override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 40), max_value=2 ** 40), st.sampled_from([0, -1, 1, 2, 3, 7, 10 ** 9]),
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -0.5, 1e-12, 1.5, 1e30]),
    st.text(alphabet="abcxyz_-./0123 ", max_size=12),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.sampled_from(["a", "size", "mixer", "layers"]), scalars, max_size=2))


def _like(default) -> st.SearchStrategy:
    """Values of the default's own type (edges included): the draws that get past composition."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.integers(-3, 3 * max(abs(default), 1)), st.sampled_from([0, -1, 2 ** 31]))
    if isinstance(default, float):
        return st.one_of(st.floats(-2.0, 2.0 * max(abs(default), 1.0)), st.sampled_from([0.0, -1e-9, 1e9]))
    if isinstance(default, str):
        return st.one_of(st.text(alphabet="abcxyz_-./0123 ", max_size=8), st.just(default + "x"))
    return values


@st.composite
def overrides(draw) -> list[str]:
    groups = []
    for group, options in GROUPS.items():
        if draw(st.integers(0, 5)) == 0:  # each group changed in one draw of six
            unknown = draw(st.integers(0, 7)) == 0  # one change in eight names an option that does not exist
            option = draw(st.sampled_from(["nope", "attention2", ""] if unknown else options))
            groups.append(f"{group}={option}")
    composed = keys_of(tuple(groups))
    chosen = list(groups)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 7)) == 0:  # a key of another group's option, or added with +/++
            key, prefix = draw(st.sampled_from(key_space())), draw(st.sampled_from(["", "+", "++"]))
            value = draw(values)
        else:  # a key this config has, a value of any type or of the default's own type
            key, prefix = draw(st.sampled_from(composed)), ""
            try:
                default = OmegaConf.select(config_of(tuple(groups)), key, default=None)
            except Exception:  # noqa: BLE001 - an interpolation that only resolves in a run: any type then
                default = None
            value = draw(st.one_of(values, _like(default)))
        chosen.append(f"{prefix}{key}={_render(value)}")
    return chosen



class Refused(Exception):
    """Hydra refused the overrides while composing: it prints its own one-line error, no traceback."""


def start_like_train_py(overrides: list[str]) -> None:
    """What ``train.py`` does before the first optimizer step, without training. Past composition, only a
    ConfigError is a clean refusal: any other exception (Hydra's InstantiationException included) reaches
    the user as a traceback."""
    import lightning as L
    from hydra.utils import instantiate

    from mixerlab.build import build_backbone, build_datamodule, build_recipe, compose_config
    from mixerlab.pretrained import apply_init
    from mixerlab.schema import validate

    try:
        cfg = compose_config(overrides)
    except HydraException as error:
        raise Refused(f"{type(error).__name__}: {error}") from error
    validate(cfg)
    backbone = build_backbone(cfg)
    apply_init(cfg.get("init"), backbone)
    datamodule = build_datamodule(cfg)
    build_recipe(cfg, backbone)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=callbacks)
    datamodule.resolve_batch_size(trainer.world_size, trainer.accumulate_grad_batches)
    datamodule.check_optimizer_steps(trainer.world_size, cfg.trainer.get("limit_train_batches"))


def names_a_key(message: str, overrides: list[str]) -> bool:
    """The error names one of the overridden keys or groups (in full or by its last part), or another key
    of the config in full: a preset's missing ``data.root`` is the key to set, whatever the draw changed."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in message or key.rsplit(".", 1)[-1] in message:
            return True
    return any(key in message for key in key_space() if "." in key)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not FRESH, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(overrides())
def test_random_overrides_start_or_fail_fast_naming_the_key(drawn):
    note(f"overrides: {drawn}")
    started = time.perf_counter()
    try:
        start_like_train_py(drawn)
    except (ConfigError, Refused) as error:
        seconds = time.perf_counter() - started
        message = f"{type(error).__name__}: {error}"
        note(message)
        assert names_a_key(message, drawn), f"{drawn}: the error names no overridden key: {message}"
        assert seconds < REFUSAL_SECONDS, f"{drawn}: refused after {seconds:.1f} s"
