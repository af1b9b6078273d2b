"""Keep secrets out of what a run saves: resolved configs, logger configs, the sweep index.

API keys belong in the environment (``WANDB_API_KEY``) or ``wandb login``'s netrc, never in a config. If
one gets into a config anyway (an override, an ``${oc.env:...}``), its value is replaced before anything is
written.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

REDACTED = "***"
# Whole key names only: `cls_token` or `num_tokens` are model settings, `auth_token` and `api_key` are not.
SECRET_KEY = re.compile(
    r"^(.*[_-])?(api[_-]?key|secret|password|passwd|credentials?)$"
    r"|^((access|auth|api|bearer|hf|wandb|github|slack)[_-])?token$",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.match(str(key).rsplit(".", 1)[-1]))


def redact(value: Any) -> Any:
    """A copy of a (nested) dict/list with the values of secret-looking keys replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redacted_config(cfg: DictConfig) -> dict:
    """The resolved config as plain containers, secrets replaced: what is saved and sent to loggers."""
    return redact(OmegaConf.to_container(cfg, resolve=True))


def redact_override(override: str) -> str:
    """``logger.wandb.api_key=abc`` -> ``logger.wandb.api_key=***``."""
    key, sep, value = override.partition("=")
    return f"{key}={REDACTED}" if sep and value and is_secret_key(key.lstrip("+~")) else override
