"""Fetch, verify and unpack CUB-200-2011, FGVC-Aircraft and Stanford Cars into the layouts the readers expect.

    python -m fgssl.data.prepare {cub,aircraft,cars} --root DIR [--archive FILE ...] [--keep-archive]

1. The archive comes from ``--archive FILE`` (repeat it for the four Stanford Cars files) or, when
   none is given, is downloaded from the official URL into ``DIR/.fgssl-downloads/`` (a partial
   ``.part`` file is resumed with an HTTP Range request, also after a cut connection).
2. Its MD5 is checked against the published one (sources below). A file carrying an official
   name must match; a file with another name that matches no published checksum (a repackaging)
   is said to be unchecked and relies on steps 4-5.
3. Every member is checked before anything is written: no absolute path, no ``..``, no link
   pointing out, no device file; the unpacked size must fit on the disk.
4. It is unpacked into ``DIR/.fgssl-prepare-<name>/`` and read there with the same reader that
   training uses (:func:`fgssl.data.readers.read_split`): class count, split sizes (against the
   expected counts of the spec), every listed image present.
5. Only then is the dataset folder moved into place (one rename), so an interrupted run never
   leaves a half-dataset that looks complete. The last line printed (stdout) is the
   ``data=... data.root=...`` to give ``train.py``.

Tests (and mirrors) override the URLs/checksums without touching the recorded values: pass
``sources=`` to :func:`prepare`, or set ``FGSSL_DATA_SOURCES`` to a JSON file
``{"cub": {"files": [{"name": ..., "url": ..., "md5": ...}], "counts": [classes, train, test]}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fgssl.data.archives import unpack
from fgssl.data.download import download, log, md5_of
from fgssl.errors import FgsslError

SOURCES_ENV = "FGSSL_DATA_SOURCES"
DOWNLOADS = ".fgssl-downloads"
STAGING = ".fgssl-prepare-"


@dataclass(frozen=True)
class Source:
    #: file name of the official archive (or plain file)
    name: str
    #: published / well-known MD5; None: none exists
    md5: Optional[str]
    #: official URL; None: no working official download (``--archive`` only)
    url: Optional[str] = None
    #: where under the staging folder it is unpacked (Stanford Cars: inside ``stanford_cars/``)
    subdir: str = ""


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    #: the folder the dataset lives in under ``--root``
    folder: str
    #: a file under ``folder`` that only this dataset's layout has
    marker: str
    files: Tuple[Source, ...]
    #: expected (classes, train images, test images) as read by fgssl's reader; None: not checked
    counts: Optional[Tuple[int, int, int]]
    #: ``data.root`` is ``DIR/folder`` (True, CUB) or ``DIR`` (False: the readers want the parent)
    root_is_folder: bool
    how_to_get: str = ""


SPECS: Dict[str, Spec] = {
    # CUB-200-2011. URL: the CaltechDATA record that replaced the old vision.caltech.edu link
    # (https://data.caltech.edu/records/65de6-vp158). MD5 97eceeb1...: the tgz_md5 of the widely used
    # CUB loaders (TDeVries/cub2011_dataset `Cub2011.tgz_md5`, ContinualAI avalanche `CUB200.tgz_md5`), the same
    # file that moved from the old URL. Counts: 200 classes, official split 5,994 train / 5,794 test.
    "cub": Spec(
        "cub", "CUB-200-2011", "CUB_200_2011", "images.txt",
        (Source("CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78",
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"),),
        (200, 5994, 5794), True,
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ (file CUB_200_2011.tgz)"),
    # FGVC-Aircraft 2013b. URL: torchvision's FGVCAircraft._URL (torchvision itself checks no MD5).
    # MD5 d4acdd33...: the "MD5 Sum" page linked from the dataset's README (archives/
    # fgvc-aircraft-2013b.html), as recorded by the R torchvision package (mlverse/torchvision,
    # R/dataset-fgvc.R) and other loaders. (A C++ port lists 85eeb15f... for it: that is Food-101's MD5.)
    # Counts: 100 variants, trainval 6,667 / test 3,333.
    "aircraft": Spec(
        "aircraft", "FGVC-Aircraft", "fgvc-aircraft-2013b", "data/variants.txt",
        (Source("fgvc-aircraft-2013b.tar.gz", "d4acdd33327262359767eeaa97a4f732",
                "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"),),
        (100, 6667, 3333), False,
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (file fgvc-aircraft-2013b.tar.gz)"),
    # Stanford Cars. The ai.stanford.edu downloads are gone (torchvision >= 0.17 StanfordCars.download
    # raises; pytorch/vision#7545), so there is no URL: --archive only. MD5s: the four files as
    # torchvision's StanfordCars.download() checked them before the host went away (car_devkit.tgz, cars_train.tgz,
    # cars_test.tgz, cars_test_annos_withlabels.mat); copies of these files still circulate.
    # A repackaging (e.g. a Kaggle zip holding stanford_cars/) has no published checksum: it is
    # checked by layout and reader only, and the run says so. Counts: 196 classes, 8,144 / 8,041.
    "cars": Spec(
        "cars", "Stanford Cars", "stanford_cars", "devkit/cars_meta.mat",
        (Source("car_devkit.tgz", "c3b158d763b6e2245038c8ad08e45376", None, "stanford_cars"),
         Source("cars_train.tgz", "065e5b463ae28d29e77c1b4b166cfe61", None, "stanford_cars"),
         Source("cars_test.tgz", "4ce7ebf6a94d07f1952d94dd34c4d501", None, "stanford_cars"),
         Source("cars_test_annos_withlabels.mat", "b0a2b23655a3edd16d84508592a98d10", None, "stanford_cars")),
        (196, 8144, 8041), False,
        "the four original files (car_devkit.tgz, cars_train.tgz, cars_test.tgz, cars_test_annos_withlabels.mat) "
        "or an archive of the torchvision stanford_cars/ folder (see docs/datasets.md)"),
}


def get_spec(name: str, sources: Optional[dict] = None) -> Spec:
    """The spec of ``name``, with ``sources`` (or the JSON named by ``$FGSSL_DATA_SOURCES``) overriding
    files/counts. The recorded :data:`SPECS` are never modified."""
    if name not in SPECS:
        raise FgsslError(f"unknown dataset {name!r}; prepare knows {', '.join(SPECS)}")
    spec = SPECS[name]
    if sources is None and os.environ.get(SOURCES_ENV):
        path = Path(os.environ[SOURCES_ENV])
        try:
            sources = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FgsslError(f"{SOURCES_ENV}={path}: cannot read it as JSON ({e})") from None
    over = (sources or {}).get(name)
    if not over:
        return spec
    kw = {}
    if "files" in over:
        kw["files"] = tuple(Source(f["name"], f.get("md5"), f.get("url"), f.get("subdir", spec.files[0].subdir))
                            for f in over["files"])
    if "counts" in over:
        kw["counts"] = tuple(over["counts"]) if over["counts"] else None
    return dataclasses.replace(spec, **kw)


def data_root(spec: Spec, root: Path) -> Path:
    """The ``data.root`` of a dataset prepared under ``root``."""
    return root / spec.folder if spec.root_is_folder else root


# ---------------------------------------------------------------------- verification
def _not_it(spec: Spec) -> str:
    return (f"the archive(s) do not hold {spec.title}: no {spec.folder}/{spec.marker} in them; "
            f"expected {spec.how_to_get}")


def _locate(spec: Spec, staging: Path) -> Path:
    """Find the dataset folder in ``staging`` (the folder holding ``spec.marker``) and move it to
    ``staging/spec.folder`` when a repackaging nested it differently."""
    want = staging / spec.folder
    if (want / spec.marker).exists():
        found = want
    else:
        hits = [p for depth in range(4) for p in staging.glob("/".join(["*"] * depth + [spec.marker]))]
        if not hits:
            raise FgsslError(_not_it(spec))
        found = Path(str(hits[0])[: -len(spec.marker) - 1])
        if found == staging:  # packed without the top folder
            tmp = staging.with_name(staging.name + ".top")
            staging.rename(tmp)
            staging.mkdir()
            tmp.rename(want)
        else:
            if want.exists():
                shutil.rmtree(want)
            found.rename(want)
    if spec.name == "cars":  # some repackagings nest cars_train/cars_train/*.jpg
        for sub in ("cars_train", "cars_test"):
            inner = want / sub / sub
            if inner.is_dir():
                tmp = want / f".{sub}"
                inner.rename(tmp)
                (want / sub).rmdir()
                tmp.rename(want / sub)
    return want


def verify(spec: Spec, root: Path) -> Tuple[int, int, int]:
    """Read ``data_root(spec, root)`` with the training reader; check counts against the spec and that
    every listed image is there. Returns (classes, train, test)."""
    from fgssl.data.readers import read_split

    droot = str(data_root(spec, root))
    try:
        train = read_split(spec.name, droot, "train")
        test = read_split(spec.name, droot, "test")
    except FgsslError as e:
        raise FgsslError(f"{spec.title} at {droot} does not read: {e}") from None
    except Exception as e:  # a reader choking on a malformed annotation file (e.g. an unreadable .mat)
        raise FgsslError(f"{spec.title} at {droot} does not read: {type(e).__name__}: {e}") from None
    got = (len(train.classes), len(train.samples), len(test.samples))
    missing = [p for p, _ in train.samples + test.samples if not os.path.isfile(p)]
    if missing:
        raise FgsslError(f"{spec.title} at {droot}: {len(missing)} listed images are missing (first: {missing[0]}); "
                         f"the archive is incomplete")
    if spec.counts is not None and got != tuple(spec.counts):
        raise FgsslError(f"{spec.title} at {droot} is not the full dataset: {got[0]} classes, {got[1]} train / "
                         f"{got[2]} test images; expected {spec.counts[0]} classes, {spec.counts[1]} / "
                         f"{spec.counts[2]}")
    return got


def _match(spec: Spec, archives: Sequence[Path]) -> List[Tuple[Path, Optional[Source]]]:
    """Pair each ``--archive`` file with the official file it is (by name, else by MD5) and check its MD5."""
    by_name = {s.name: s for s in spec.files}
    out = []
    for path in archives:
        if not path.is_file():
            raise FgsslError(f"--archive {path}: file not found")
        log(f"checking the MD5 of {path}")
        got = md5_of(path)
        src = by_name.get(path.name)
        if src is not None and src.md5 and got != src.md5:
            raise FgsslError(f"checksum mismatch for {path}: expected md5 {src.md5} ({src.name}), got {got}; "
                             f"the file is corrupt or incomplete: delete {path} and get it again")
        if src is None:
            src = next((s for s in spec.files if s.md5 == got), None)
        if src is None:
            log(f"note: {path.name} is not one of the official {spec.title} files ("
                f"{', '.join(s.name for s in spec.files)}) and matches no published checksum (md5 {got}): "
                f"it is checked by layout and reader only")
        elif src.md5:
            log(f"{path.name}: md5 {got} matches the published checksum of {src.name}")
        else:
            log(f"{path.name}: no published checksum exists; size {path.stat().st_size} bytes, checked by layout "
                f"and reader only")
        out.append((path, src))
    official = {s.name for _, s in out if s is not None}
    if len(official) == len(out) and official != set(by_name):
        missing = [n for n in by_name if n not in official]
        raise FgsslError(f"{spec.title} needs all of {', '.join(by_name)}; missing: {', '.join(missing)} "
                         f"(give each with --archive FILE)")
    return out


def _download_all(spec: Spec, root: Path) -> List[Tuple[Path, Optional[Source]]]:
    """Download every official file of ``spec`` into ``root/.fgssl-downloads`` and check its MD5."""
    if any(s.url is None for s in spec.files):
        raise FgsslError(f"{spec.title} has no working official download: get {spec.how_to_get} and run "
                         f"python -m fgssl.data.prepare {spec.name} --root {root} --archive FILE")
    pairs: List[Tuple[Path, Optional[Source]]] = []
    for s in spec.files:
        path = download(s.url, root / DOWNLOADS / s.name, offline_hint=f"python -m fgssl.data.prepare "
                        f"{spec.name} --root {root} --archive /path/to/{s.name}")
        if s.md5:
            log(f"checking the MD5 of {path}")
            got = md5_of(path)
            if got != s.md5:
                raise FgsslError(f"checksum mismatch for {path}: expected md5 {s.md5}, got {got}; delete {path} "
                                 f"and run again (it is downloaded anew)")
            log(f"{s.name}: md5 matches the published checksum")
        else:
            log(f"{s.name}: no published checksum exists; size {path.stat().st_size} bytes")
        pairs.append((path, s))
    return pairs


# ---------------------------------------------------------------------- the command
def prepare(name: str, root, archives: Sequence = (), keep_archive: bool = False,
            sources: Optional[dict] = None) -> str:
    """Prepare dataset ``name`` under ``root``; returns (and prints on stdout) ``data=NAME data.root=PATH``."""
    spec = get_spec(name, sources)
    root = Path(root).expanduser().resolve()
    archives = [Path(a).expanduser().resolve() for a in archives]
    line = f"data={spec.name} data.root={data_root(spec, root)}"
    target = root / spec.folder
    if target.exists():
        try:
            got = verify(spec, root)
        except FgsslError as e:
            raise FgsslError(f"{target} exists but is not a complete {spec.title}: {e}. Move it away (or delete "
                             f"it) to prepare it again") from None
        log(f"{spec.title} is already prepared at {target} ({got[0]} classes, {got[1]} train / {got[2]} test)")
        print(line, flush=True)
        return line
    root.mkdir(parents=True, exist_ok=True)
    downloaded: List[Path] = []
    if archives:
        pairs = _match(spec, archives)
    else:
        pairs = _download_all(spec, root)
        downloaded = [path for path, _ in pairs]
    staging = root / f"{STAGING}{spec.name}"
    if staging.exists():  # left by an interrupted run: ours, never a dataset
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        unpack([(path, staging / (src.subdir if src is not None else "")) for path, src in pairs], spec.marker,
               _not_it(spec))
        _locate(spec, staging)
        got = verify(spec, staging)
        # into place: extras of the archive first (CUB's top-level attributes.txt), the dataset folder last
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == spec.folder):
            if not (root / entry.name).exists():
                entry.rename(root / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path in downloaded:
        if not keep_archive:
            path.unlink()
    if downloaded and not keep_archive:
        try:
            (root / DOWNLOADS).rmdir()
        except OSError:
            pass
    log(f"{spec.title} ready at {target}: {got[0]} classes, {got[1]} train / {got[2]} test images "
        f"(read with fgssl's reader). Train with: python train.py {line}")
    print(line, flush=True)
    return line


def ensure(name: str, data_root_cfg: Optional[str]) -> None:
    """``data.download=true``: prepare ``name`` when its folder is missing under ``data.root``."""
    if name not in SPECS or not data_root_cfg:
        return
    spec = SPECS[name]
    given = Path(data_root_cfg).expanduser()
    root = given.parent if spec.root_is_folder and given.name == spec.folder else given
    if (root / spec.folder).exists():
        return
    log(f"data.download=true: {root / spec.folder} is missing; preparing {spec.title} under {root}")
    prepare(name, root)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fgssl.data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="cub, aircraft or cars")
    p.add_argument("--root", required=True, help="folder to hold the dataset (e.g. /data)")
    p.add_argument("--archive", action="append", default=[], metavar="FILE",
                   help="a local copy of the official archive instead of downloading (repeat for Cars)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    a = p.parse_args(argv)
    from fgssl.errors import run_or_exit

    run_or_exit(prepare, a.name, a.root, a.archive, a.keep_archive)


if __name__ == "__main__":
    main()
