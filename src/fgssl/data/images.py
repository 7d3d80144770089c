"""Image decoding with the conversions and checks fgssl promises.

* grayscale, palette, CMYK, 16-bit and alpha images are converted to RGB
  (alpha is composited on white);
* a zero-byte, truncated or otherwise unreadable file is a *bad image*. With
  ``data.on_bad_image=skip`` (default) it is left out with a warning that names
  it, counted, and listed in ``bad_images.txt`` in the run directory; with
  ``error`` the run stops with one line that names the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from PIL import Image

from fgssl.errors import FgsslError


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Fully decode ``path`` as an RGB PIL image, or raise FgsslError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image
        raise FgsslError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def check_image(path: str) -> Optional[str]:
    """Cheap check (size + header verify). Returns a reason string if the file is bad."""
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return None


def filter_bad(samples: Iterable[Tuple[str, int]], policy: str, log_path: Optional[Path]) -> List[Tuple[str, int]]:
    """Drop bad images according to ``policy`` (``skip`` or ``error``)."""
    if policy not in ("skip", "error"):
        raise FgsslError(f"data.on_bad_image={policy!r} must be 'skip' or 'error'")
    good, bad = [], []
    for path, label in samples:
        reason = check_image(path)
        if reason is None:
            good.append((path, label))
            continue
        if policy == "error":
            raise FgsslError(f"bad image {path}: {reason} (set data.on_bad_image=skip to leave such files out)")
        bad.append((path, reason))
    for path, reason in bad:
        record_bad(path, reason, log_path)
    return good


def record_bad(path: str, reason: str, log_path: Optional[Path]) -> None:
    """Warn about a bad image and list it in ``log_path`` once: the same file is found again by the
    pre-check and by the loader, in every epoch, by several datasets and DataLoader workers (the
    check and the append hold an ``fcntl`` lock on the log, so two workers cannot both add it)."""
    warnings.warn(f"skipping bad image {path}: {reason}", stacklevel=2)
    if log_path is None:
        return
    import fcntl

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        if any(line.split("\t", 1)[0] == path for line in fh.read().splitlines()):
            return
        fh.write(f"{path}\t{reason}\n")


def read_bad_log(log_path: Path) -> List[Tuple[str, str]]:
    if not log_path.exists():
        return []
    rows = [line.rstrip("\n").split("\t", 1) for line in log_path.read_text().splitlines() if line.strip()]
    seen, out = set(), []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            out.append((r[0], r[1] if len(r) > 1 else ""))
    return out
