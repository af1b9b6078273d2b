"""An ImageNet-layout tree on disk: ``ROOT/<split>/<wnid>/<image>``, how it is listed, checked and decoded.

Both ImageNet pipelines (folders, FFCV betons) start here, so they agree on labels: class ``i`` is the
``i``-th class folder name in sorted order (the wnid order torchvision's ``ImageFolder`` and the ImageNet
devkit use).

Bad input is handled in three tiers, cheapest first:

1. **Listing** (every start-up, no file is opened): a missing or empty root, a split without class
   folders, train/val class sets that differ, or a class count that is not ``data.num_classes`` fail at
   once, naming the path and what was expected. Stray files (``.DS_Store``, ``notes.txt``, anything
   without an image extension, files beside the class folders) are bad files, named and counted.
2. **Lazy** (while loading): a file that does not decode (truncated, zero bytes, not an image) is met by
   the loader, which skips or fails by the ``bad_files`` policy (see ``data/imagenet_folder.py``).
3. **Verify** (opt-in for the folder loader, always for the FFCV writer): every file is fully parsed in a
   process pool before training; JPEGs are decoded at 1/8 scale (libjpeg's DCT scaling still reads every
   byte of the entropy-coded data, so truncation shows, at a fraction of the cost). The verdict is cached
   by a fingerprint of (path, size, mtime) of every file, so a second start-up on an unchanged tree only
   pays for ``stat``.

Decodable oddities of real ImageNet (a PNG named ``.JPEG``, CMYK and grayscale JPEGs) are not bad:
:func:`load_rgb` opens files by content, not by name, and converts every mode to RGB.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mixerlab.errors import BadImageError, DatasetError
from mixerlab.storage import read_derived_json

# torchvision's IMG_EXTENSIONS, compared case-insensitively (ImageNet's files end in .JPEG)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}\t{self.reason}"


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode any image PIL knows by its content (a PNG named .JPEG is fine) and return it in RGB.

    CMYK (ImageNet has 22 such JPEGs), grayscale, palette and alpha images are converted; anything that
    does not decode raises :class:`BadImageError` naming the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"{path}: {describe_decode_error(path, error)}") from error


def describe_decode_error(path: str | os.PathLike, error: BaseException) -> str:
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
    except OSError:
        return "file vanished or cannot be read"
    if "truncated" in str(error).lower():
        return f"truncated image ({error})"
    return f"not a decodable image ({type(error).__name__}: {error})"


def check_image(path: str) -> str | None:
    """Fully parse one file: None when it decodes, else the reason. JPEGs decode at 1/8 scale (module doc)."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return describe_decode_error(path, error)


@dataclass
class Split:
    """One split's class folders and image files (labels are indices into ``classes``)."""

    path: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    stray: list[BadFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_split(path: Path) -> Split:
    """List ``path/<class>/<files>`` without opening any file; fail when the split has no class folders."""
    if not path.is_dir():
        raise DatasetError(
            f"{path} does not exist or is not a directory: expected a split folder "
            f"with one sub-folder per class (<wnid>/<image files>)"
        )
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    folders = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    stray = [BadFile(e.path, "stray file beside the class folders") for e in entries if not e.is_dir()]
    if not folders:
        n_images = sum(is_image_name(e.name) for e in entries if not e.is_dir())
        hint = (
            (
                f"; it holds {n_images} image files directly: sort them into <wnid>/ folders "
                f"(for ImageNet's val: the devkit's ground truth, e.g. valprep.sh)"
            )
            if n_images
            else ""
        )
        raise DatasetError(f"{path} has no class folders: expected {path}/<class>/<image files>{hint}")
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for label, name in enumerate(folders):
        before = len(samples)
        for entry in sorted(os.scandir(path / name), key=lambda e: e.name):
            if entry.is_dir():
                stray.append(BadFile(entry.path, "folder inside a class folder (not read)"))
            elif is_image_name(entry.name):
                samples.append((entry.path, label))
            else:
                stray.append(BadFile(entry.path, "not an image file (by extension)"))
        if len(samples) == before:
            empty.append(name)
    return Split(path=path, classes=folders, samples=samples, stray=stray, empty_classes=empty)


def scan_tree(
    root: str | os.PathLike | None,
    splits: Sequence[str],
    num_classes: int | None,
    root_key: str = "data.root",
) -> dict[str, Split]:
    """List every split of an ImageNet-layout tree and check they agree; raise :class:`DatasetError` if not.

    Labels come from the first split's sorted class folders; every other split must have the same set.
    """
    if root in (None, "", "None", "null"):
        raise DatasetError(
            f"{root_key} is not set: pass {root_key}=/path/to/imagenet (a folder with "
            f"{'/ and '.join(splits)}/ class folders) or set IMAGENET_ROOT"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"{root_key}={root} does not exist or is not a directory: expected "
            f"{root}/{{{','.join(splits)}}}/<class>/<image files>"
        )
    if not any(root.iterdir()):
        raise DatasetError(
            f"{root_key}={root} is empty: expected {root}/{{{','.join(splits)}}}/<class>/<images>"
        )
    found: dict[str, Split] = {}
    for split in splits:
        first = next(iter(found.values()), None)
        listing = list_split(root / split)
        if first is not None and listing.classes != first.classes:
            a, b = set(first.classes), set(listing.classes)
            raise DatasetError(
                f"class folders differ between {first.path} ({len(a)}) and {listing.path} ({len(b)}): "
                f"only in {first.path.name}: {_few(sorted(a - b))}; only in {listing.path.name}: "
                f"{_few(sorted(b - a))}. Both splits need the same class folders (labels are sorted names)"
            )
        found[split] = listing
    classes = next(iter(found.values())).classes
    if num_classes is not None and len(classes) != num_classes:
        raise DatasetError(
            f"data.num_classes={num_classes} but {root} has {len(classes)} class folders "
            f"({_few(classes)}): set data.num_classes={len(classes)}"
        )
    return found


def _few(names: Sequence[str], n: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


# ---------------------------------------------------------------- full verification (opt-in, cached)
def fingerprint(paths: Iterable[str]) -> str:
    """Digest of (path, size, mtime) of every file: changes when any file is added, removed or rewritten."""
    digest = hashlib.sha1()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("MIXERLAB_CACHE", "~/.cache/mixerlab")).expanduser() / "verify"


def verify_images(
    paths: Sequence[str],
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[BadFile]:
    """Parse every file (in ``num_workers`` processes); return the ones that do not decode.

    With ``cache_dir`` the verdict is stored under the fingerprint of the file list and reused while no
    file changes, so re-verifying an unchanged 1.28M-file tree costs one ``stat`` per file.
    """
    cache = None
    if cache_dir is not None:
        key = fingerprint(paths)
        cache = Path(cache_dir) / f"{key}.json"
        cached = read_derived_json(cache, "image check cache", "checking the images again") or {}
        if isinstance(cached.get("bad"), list):
            return [BadFile(p, r) for p, r in cached["bad"]]
    if num_workers > 0 and len(paths) > 64:
        with ProcessPoolExecutor(num_workers) as pool:
            verdicts = pool.map(
                check_image, paths, chunksize=max(1, min(256, len(paths) // (8 * num_workers)))
            )
            verdicts = list(_progress(verdicts, len(paths), progress))
    else:
        verdicts = [check_image(p) for p in _progress(paths, len(paths), progress)]
    bad = [BadFile(p, r) for p, r in zip(paths, verdicts, strict=True) if r is not None]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"files": len(paths), "bad": [[b.path, b.reason] for b in bad]}))
        tmp.replace(cache)
    return bad


def _progress(items, total: int, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc="verifying images", unit="img")
