"""(path, label) lists from the official on-disk layouts of each dataset.

Each reader returns a :class:`Split` for ``train`` and ``test``. Nothing is
downloaded: a missing root or file raises :class:`FgsslError` naming the path
and the layout that was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from fgssl.errors import FgsslError

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: The repo ships the cub53 bird sample here (see its PROVENANCE.md).
EMBEDDED_CUB53 = Path(__file__).resolve().parents[3] / "data" / "cub53_birds"

LAYOUTS = {
    "imagefolder": "ROOT/train/<class>/<image> and ROOT/test/<class>/<image>",
    "cub53": "ROOT/train/<class>/<image> and ROOT/test/<class>/<image> (embedded copy at data/cub53_birds)",
    "cub": "ROOT = CUB_200_2011/ with images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt",
    "cars": "ROOT/stanford_cars/ with devkit/{cars_meta.mat,cars_train_annos.mat}, cars_train/, cars_test/, "
    "cars_test_annos_withlabels.mat (torchvision StanfordCars layout)",
    "aircraft": "ROOT/fgvc-aircraft-2013b/data/ with images/, variants.txt, images_variant_{trainval,test}.txt "
    "(torchvision FGVCAircraft layout)",
}


@dataclass
class Split:
    samples: List[Tuple[str, int]]
    classes: List[str]


def _missing(name: str, path: Path, what: str) -> FgsslError:
    return FgsslError(f"data={name}: {what} not found: {path}. Expected layout: {LAYOUTS[name]}")


def _need(name: str, path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise _missing(name, path, what)
    return path


def read_imagefolder(root: str, split: str, name: str = "imagefolder") -> Split:
    base = Path(root).expanduser()
    _need(name, base, "dataset root")
    d = _need(name, base / split, f"'{split}' folder")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not classes:
        raise FgsslError(f"data={name}: no class folders in {d}. Expected layout: {LAYOUTS[name]}")
    samples = []
    for i, c in enumerate(classes):
        for f in sorted((d / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMG_EXTS:
                samples.append((str(f), i))
    if not samples:
        raise FgsslError(f"data={name}: no images ({'/'.join(IMG_EXTS)}) under {d}")
    return Split(samples, classes)


def _read_table(name: str, path: Path) -> Dict[int, str]:
    out = {}
    with open(_need(name, path)) as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(" ", 1)
            if len(parts) != 2:
                raise FgsslError(f"data={name}: {path}:{n}: expected '<id> <value>', got {line!r}")
            out[int(parts[0])] = parts[1]
    return out


def read_cub(root: str, split: str) -> Split:
    """CUB-200-2011 with its official train/test split (``train_test_split.txt``: 1 = train)."""
    base = Path(root).expanduser()
    _need("cub", base, "dataset root")
    if not (base / "images.txt").exists() and (base / "CUB_200_2011" / "images.txt").exists():
        base = base / "CUB_200_2011"
    images = _read_table("cub", base / "images.txt")
    labels = _read_table("cub", base / "image_class_labels.txt")
    is_train = _read_table("cub", base / "train_test_split.txt")
    classes_tab = _read_table("cub", base / "classes.txt")
    _need("cub", base / "images", "images/ folder")
    want = "1" if split == "train" else "0"
    samples = [
        (str(base / "images" / rel), int(labels[i]) - 1)
        for i, rel in sorted(images.items())
        if is_train.get(i, "").strip() == want
    ]
    classes = [classes_tab[k] for k in sorted(classes_tab)]
    return Split(samples, classes)


def read_cars(root: str, split: str) -> Split:
    """Stanford Cars through torchvision's reader on a local root (needs scipy)."""
    from torchvision.datasets import StanfordCars

    base = Path(root).expanduser()
    _need("cars", base, "dataset root")
    folder = base / "stanford_cars"
    for rel in ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_train", "cars_test",
                "cars_test_annos_withlabels.mat"):
        _need("cars", folder / rel)
    ds = StanfordCars(str(base), split=split, download=False)
    return Split([(p, int(t)) for p, t in ds._samples], list(ds.classes))


def read_aircraft(root: str, split: str) -> Split:
    """FGVC-Aircraft at variant level (trainval / test) through torchvision's reader."""
    from torchvision.datasets import FGVCAircraft

    base = Path(root).expanduser()
    _need("aircraft", base, "dataset root")
    data = base / "fgvc-aircraft-2013b" / "data"
    tv_split = "trainval" if split == "train" else "test"
    for rel in ("images", "variants.txt", f"images_variant_{tv_split}.txt"):
        _need("aircraft", data / rel)
    try:
        ds = FGVCAircraft(str(base), split=tv_split, annotation_level="variant", download=False)
    except KeyError as e:
        raise FgsslError(f"data=aircraft: {data}/images_variant_{tv_split}.txt names a variant {e} "
                         f"that is not in {data}/variants.txt") from None
    return Split(list(zip(ds._image_files, map(int, ds._labels))), list(ds.classes))


READERS: Dict[str, Callable[[str, str], Split]] = {
    "imagefolder": read_imagefolder,
    "cub53": lambda root, split: read_imagefolder(root, split, name="cub53"),
    "cub": read_cub,
    "cars": read_cars,
    "aircraft": read_aircraft,
}


def read_split(name: str, root: str | None, split: str) -> Split:
    """Read ``split`` (``train`` or ``test``) of dataset ``name`` at ``root``."""
    if name not in READERS:
        raise FgsslError(f"data.name={name!r} is unknown; choose one of {sorted(READERS)}")
    if root is None:
        if name != "cub53":
            raise FgsslError(f"data={name} needs data.root=/path/to/dataset. Expected layout: {LAYOUTS[name]}")
        root = str(EMBEDDED_CUB53)
    out = READERS[name](root, split)
    if not out.samples:
        raise FgsslError(f"data={name}: the {split} split at {root} is empty. Expected layout: {LAYOUTS[name]}")
    return out
