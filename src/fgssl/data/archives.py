"""Unpacking dataset archives safely (tar, tgz, zip): every member is checked before the first byte is
written, for :mod:`fgssl.data.prepare`."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple

from fgssl.data.download import _gb, log, need_space
from fgssl.errors import FgsslError


# ---------------------------------------------------------------------- safe unpacking
class _Unsafe(Exception):
    pass


def _zip_check(info: zipfile.ZipInfo) -> None:
    name = info.filename
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise _Unsafe(f"member {name!r} has an absolute path")
    if ".." in p.parts:
        raise _Unsafe(f"member {name!r} would land outside the target ('..')")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _Unsafe(f"member {name!r} is a link (links in zip archives are not unpacked)")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise _Unsafe(f"member {name!r} is a device or special file")


def _members(path: Path, dest: Path):
    """Open ``path`` and check every member (before anything is written); returns (kind, handle, total bytes)."""
    if tarfile.is_tarfile(path):
        try:
            tf = tarfile.open(path)
            members = tf.getmembers()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise FgsslError(f"{path}: cannot read the archive ({e}): truncated or corrupt? Delete it and "
                             f"download it again") from None
        for m in members:
            # the standard library's 'data' filter (PEP 706): refuses absolute paths, '..', links pointing
            # out of dest, absolute links and device files. Called here on every member first, so a bad
            # member at the end of the archive stops the run before its first byte is written.
            if m.name.startswith(("/", os.sep)) or os.path.isabs(m.name):  # the filter would only strip the '/'
                tf.close()
                raise _Unsafe(f"member {m.name!r} has an absolute path")
            try:
                tarfile.data_filter(m, str(dest))
            except tarfile.FilterError as e:
                tf.close()
                raise _Unsafe(f"member {m.name!r}: {e}") from None
        return "tar", tf, sum(m.size for m in members if m.isfile())
    if zipfile.is_zipfile(path):
        try:
            zf = zipfile.ZipFile(path)
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            raise FgsslError(f"{path}: cannot read the zip archive ({e}): truncated or corrupt?") from None
        for info in infos:
            try:
                _zip_check(info)
            except _Unsafe:
                zf.close()
                raise
        return "zip", zf, sum(i.file_size for i in infos)
    return "file", None, path.stat().st_size


def _names(kind: str, handle) -> List[str]:
    if kind == "tar":
        return [m.name for m in handle.getmembers()]
    if kind == "zip":
        return [i.filename for i in handle.infolist()]
    return []


def unpack(jobs: Sequence[Tuple[Path, Path]], marker: Optional[str] = None, not_it: str = "") -> None:
    """Unpack each ``(archive, dest)`` (tar/tgz/zip; a plain file such as Stanford Cars'
    ``cars_test_annos_withlabels.mat`` is copied into dest). Every member of
    every archive is checked, and the total size compared with the free space, before anything is written.
    ``marker``: a file the archives must hold (else the error ``not_it``), checked before anything is unpacked."""
    opened = []
    try:
        for path, dest in jobs:
            dest.mkdir(parents=True, exist_ok=True)
            try:
                opened.append((path, dest, *_members(path, dest)))
            except _Unsafe as e:
                raise FgsslError(f"{path}: refusing to unpack: {e}; nothing was unpacked") from None
            if opened[-1][2] == "file" and path.suffix != ".mat":  # the only plain file: Cars' test labels
                raise FgsslError(f"{path}: not a tar or zip archive (truncated download, or not the dataset?)")
        if marker is not None:  # a wrong archive is told before its gigabytes are unpacked
            names = [n.replace("\\", "/").rstrip("/") for _, _, kind, h, _ in opened for n in _names(kind, h)]
            if not any(n == marker or n.endswith("/" + marker) for n in names):
                raise FgsslError(not_it)
        total = sum(size for *_, size in opened)
        need_space(jobs[0][1], total, "unpacking " + " + ".join(p.name for p, _ in jobs))
        for path, dest, kind, handle, size in opened:
            log(f"unpacking {path.name} ({_gb(size)})")
            try:
                if kind == "tar":
                    handle.extractall(dest, filter="data")
                elif kind == "zip":
                    handle.extractall(dest)
                else:
                    shutil.copyfile(path, dest / path.name)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
                raise FgsslError(f"{path}: the archive broke off while unpacking ({e}): truncated or corrupt? "
                                 f"Delete it and get it again") from None
    finally:
        for *_, handle, _size in opened:
            if handle is not None:
                handle.close()


