"""The project's error types, in one place that ``mixers/``, ``data/`` and ``mixerlab/`` all import from.

Every message names the config key, file or value at fault and says what to do instead.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """An impossible configuration; the message names the keys and values and says what to do."""


class DatasetError(ConfigError):
    """The dataset on disk is not what the config says: the message names the path and what was expected."""


class BadImageError(OSError):
    """One file that cannot be decoded; the message names it and says why."""


class NonFiniteError(RuntimeError):
    """A NaN or Inf loss or weight: the run stopped before it could write it into a checkpoint."""


class DamagedFileError(ConfigError):
    """A file the project reads is truncated, empty, of the wrong kind or for another model: the message names
    it, says what is wrong and what to do. A :class:`ConfigError`, so the scripts print its line alone."""


class DiskFullError(OSError):
    """A write stopped because the file system is full: the message names the path being written. Files
    already written stay whole (every write is atomic), so freeing space and re-running the command
    resumes."""
