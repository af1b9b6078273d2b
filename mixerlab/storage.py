"""Reading the files the project keeps, and writing them on a disk that may fill up.

Every reader of a weights file, checkpoint, JSON record or run config goes through one of these, so a
damaged file ends in one line -- which file, what is wrong with it, what to do -- rather than in whatever
the parser raised (``PytorchStreamReader failed reading zip archive``, ``OSError: [Errno 22]``,
``JSONDecodeError``) several frames away from the file's name. The writers' side is :func:`disk_full`: a
full disk shows up as ``OSError(ENOSPC)`` from Python, but as a ``RuntimeError`` from ``torch.save``'s C++
writer, and both must read "the disk is full at PATH".
"""

from __future__ import annotations

import errno
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

from mixerlab.errors import DamagedFileError, DiskFullError

log = logging.getLogger("mixerlab")

# what torch.save's C++ writer (inline_container.cc) says when a write comes up short
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _describe(path: Path) -> str:
    size = path.stat().st_size
    return "is empty (0 bytes)" if size == 0 else f"is truncated or not a torch file ({size:,} bytes)"


def load_torch_file(path: str | Path, what: str, fix: str, mmap: bool = False,
                    map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, or a :class:`DamagedFileError` naming ``path`` as ``what``
    (e.g. "init.checkpoint") and saying ``fix``.

    A file that loads but holds pickled objects other than tensors is not damaged: that
    ``pickle.UnpicklingError`` passes through for the caller, which knows how to advise re-saving it."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DamagedFileError(f"{what}: {path} does not exist; {fix}")
    try:
        if path.stat().st_size == 0:
            raise EOFError
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # a whole pickle naming a class: not damaged, see above
            raise
        raise DamagedFileError(f"{what}: {path} {_describe(path)}; {fix}") from None
    except PermissionError as error:  # whole, but not ours to read: "truncated" would send the user astray
        raise DamagedFileError(f"{what}: {path} cannot be read ({error.strerror}); check its permissions") \
            from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError):
        raise DamagedFileError(f"{what}: {path} {_describe(path)}; {fix}") from None


def read_json_file(path: str | Path, what: str, fix: str, expect: type = dict) -> Any:
    """The JSON in ``path``, which must be a ``expect`` (an object by default); ``None`` if the file does not
    exist; a :class:`DamagedFileError` naming it if it is empty, cut short or holds something else."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{what} {path} cannot be read ({error}); {fix}") from None
    if not text.strip():
        raise DamagedFileError(f"{what} {path} is empty; {fix}")
    try:
        value = json.loads(text)
    except ValueError as error:
        raise DamagedFileError(f"{what} {path} is not valid JSON (truncated? {error}); {fix}") from None
    if not isinstance(value, expect):
        raise DamagedFileError(
            f"{what} {path} holds a JSON {type(value).__name__}, not the {expect.__name__} expected; {fix}")
    return value


def read_derived_json(path: str | Path, what: str, fix: str, expect: type = dict) -> Any:
    """:func:`read_json_file` for a record the project rewrites on its own (a run's summary, sweep.json):
    a damaged one is reported in one warning line and read as absent, so the caller rebuilds it."""
    try:
        return read_json_file(path, what, fix, expect)
    except DamagedFileError as error:
        log.warning("%s", error)
        return None


def read_config_file(path: str | Path, what: str, fix: str):
    """A YAML config (``OmegaConf.load``) that must be a mapping, or a :class:`DamagedFileError` naming it."""
    from omegaconf import DictConfig, OmegaConf

    path = Path(path)
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise DamagedFileError(f"{what}: {path} does not exist; {fix}") from None
    except Exception as error:  # yaml's scanner and parser errors share no base class with OmegaConf's
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DamagedFileError(f"{what} {path} is not valid YAML ({first}); {fix}") from None
    if not isinstance(cfg, DictConfig) or not cfg:
        raise DamagedFileError(f"{what} {path} is empty or not a mapping of keys; {fix}")
    return cfg


def disk_full(error: BaseException, path: str | Path) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``path`` if ``error`` is a write that failed for lack of space
    (Python's ENOSPC or EDQUOT, or torch.save's short write), else ``None``."""
    if isinstance(error, DiskFullError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full" if error.errno == errno.ENOSPC else "the disk quota is exceeded"
    elif isinstance(error, RuntimeError) and any(s in str(error) for s in _TORCH_SHORT_WRITE):
        reason = "the disk is full"  # the C++ writer's "unexpected pos": its write came up short
    else:
        return None
    return DiskFullError(
        f"{reason} writing {path}: free space there and run the same command again (what was written "
        "before is intact; a run resumes from its last checkpoint)",
    )
