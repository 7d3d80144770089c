"""Downloading a dataset archive (resumable) and the disk-space and checksum checks around it, for
:mod:`fgssl.data.prepare`."""

from __future__ import annotations

import errno
import http.client
import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from fgssl.errors import FgsslError


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def need_space(where: Path, need: int, what: str) -> None:
    free = _free_bytes(where)
    if need > free:
        raise FgsslError(f"not enough disk space in {where}: {what} needs {_gb(need)}, {_gb(free)} free; "
                         f"free some space or choose another --root")


def md5_of(path: Path) -> str:
    # torchvision's helper (chunked, usedforsecurity=False)
    from torchvision.datasets.utils import calculate_md5

    return calculate_md5(str(path))


# ---------------------------------------------------------------------- download
def download(url: str, dest: Path, retries: int = 3, timeout: float = 60.0, offline_hint: str = "") -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``; a partial ``.part`` (an earlier run, or a
    connection cut during this one) is resumed with ``Range: bytes=<have>-``.

    Home-made on urllib because torchvision's ``download_url`` neither resumes nor reports a cut
    connection (it leaves a short file for the checksum to catch)."""
    if dest.exists():
        log(f"using the earlier download {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for _attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        resp = _open(url, dest, part, have, timeout, offline_hint)
        if resp is None:  # the server has nothing left to send: the .part is complete
            part.replace(dest)
            return dest
        with resp:
            last_error = _receive(resp, dest, part, have)
        if last_error:
            continue
        part.replace(dest)
        return dest
    raise FgsslError(f"download of {url} was cut {retries + 1} times ({last_error}); the partial file {part} is kept: "
                     f"rerun the same command to resume, or pass a complete file with --archive FILE")


def _open(url: str, dest: Path, part: Path, have: int, timeout: float, offline_hint: str):
    """The response to a (ranged, when ``have`` bytes are there) GET; None when the range is past the end."""
    headers = {"User-Agent": "fgssl-prepare"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is complete
            return None
        raise FgsslError(f"cannot download {url}: HTTP {e.code} {e.reason}; download it by hand and "
                         f"pass it with --archive FILE") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        kept = f" (the partial file {part} is kept: rerun to resume)" if have else ""
        try:
            dest.parent.rmdir()  # only when empty
        except OSError:
            pass
        hint = offline_hint or "python -m fgssl.data.prepare NAME --root DIR --archive FILE"
        raise FgsslError(f"cannot reach {url} ({reason}): no network?{kept} Download {dest.name} on a machine "
                         f"that is online, copy it here and run: {hint}") from None


def _receive(resp, dest: Path, part: Path, have: int) -> str:
    """Append (a 206 answer to the range) or write the body to ``part``; returns why it is incomplete
    (empty when it is complete)."""
    if have and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
        mode, start = "ab", have
        log(f"resuming {dest.name} at {_gb(have)}")
    else:
        mode, start = "wb", 0
    length = resp.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    if length is not None:
        need_space(dest.parent, int(length), f"downloading {dest.name}")
    try:
        _copy(resp, part, mode, start, total)
    except (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
        error = f"{type(e).__name__}: {e}"
        log(f"connection lost at {_gb(part.stat().st_size)} ({error}); resuming")
        return error
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FgsslError(f"disk full while downloading to {part}: free some space and rerun (the "
                             f"partial file is resumed)") from None
        raise
    got = part.stat().st_size
    if total is not None and got < total:
        error = f"got {got} of {total} bytes"
        log(f"connection closed early ({error}); resuming")
        return error
    return ""


def _copy(resp, part: Path, mode: str, start: int, total: Optional[int]) -> None:
    from tqdm import tqdm

    with open(part, mode) as fh, tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5],
                                      disable=None, file=sys.stderr) as bar:
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            fh.write(chunk)
            bar.update(len(chunk))


