"""Tiny datasets written in the *official* on-disk layouts of each benchmark.

Every ``make_*`` function writes a few small random-texture images per class and
the annotation files exactly as the original archives (or torchvision's readers)
lay them out, and returns a :class:`FixtureSet` with the ``data.root`` to pass to
fgssl and the (path, label) lists and class names a correct reader must return.

* :func:`make_cub`: ``CUB_200_2011/{images/<id>.<Name>/*.jpg, images.txt,
  image_class_labels.txt, train_test_split.txt, classes.txt, bounding_boxes.txt,
  parts/{parts.txt, part_locs.txt}}`` -- train and test images interleaved in the
  id order, so only ``train_test_split.txt`` (1 = train) tells them apart;
* :func:`make_cars`: torchvision ``StanfordCars`` -- ``stanford_cars/devkit/
  {cars_meta.mat, cars_train_annos.mat, cars_test_annos.mat}``, ``cars_train/``,
  ``cars_test/``, ``cars_test_annos_withlabels.mat`` (MATLAB v5 files written
  with ``scipy.io.savemat``: an ``annotations`` struct array with ``bbox_x1 ..
  bbox_y2``, ``class`` (1-based) and ``fname``; ``class_names`` a 1xN cell);
* :func:`make_aircraft`: torchvision ``FGVCAircraft`` -- ``fgvc-aircraft-2013b/
  data/{images/<7-digit id>.jpg, variants.txt, images_variant_{train,val,trainval,
  test}.txt, families.txt, manufacturers.txt, ...}``; variant names contain
  spaces and slashes as the real ones do, and ``variants.txt`` is not sorted
  (labels follow its order);
* :func:`make_imagefolder_set`: ``ROOT/{train,test}/<class>/*.jpg``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch

from conftest import write_image

Samples = List[Tuple[str, int]]


def one_torch_thread():
    """Generator for a module-scoped fixture: run torch on one thread, then restore.

    The networks in these tests are tiny (batch 16 at 32 px); on a 2-core machine shared
    with other processes, two intra-op threads are up to 10x slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class FixtureSet:
    #: what to pass as ``data.root``
    root: Path
    #: ``data.name``
    name: str
    classes: List[str]
    train: Samples = field(default_factory=list)
    test: Samples = field(default_factory=list)

    def overrides(self) -> List[str]:
        return [f"data={self.name}", f"data.root={self.root}"]


def _seed(c: int, i: int, split: str) -> int:
    return 1000 * c + i + (97 if split == "test" else 0)


def _size(i: int, size: Tuple[int, int]) -> Tuple[int, int]:
    # slightly varying aspect ratios, as in real data
    return (size[0] + 4 * (i % 3), size[1])


# ---------------------------------------------------------------------- CUB-200-2011
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(base: Path, classes: int = 3, train_per_class: int = 6, test_per_class: int = 3,
             size=(40, 40)) -> FixtureSet:
    """``base/CUB_200_2011`` in the official layout; returns root = that folder."""
    root = base / "CUB_200_2011"
    names = (CUB_CLASSES + [f"{k:03d}.Bird_{k}" for k in range(len(CUB_CLASSES) + 1, classes + 1)])[:classes]
    images, labels, split, boxes, parts = [], [], [], [], []
    fx = FixtureSet(root, "cub", names)
    img_id = 0
    for c, name in enumerate(names):
        order = []
        # interleave: train, test, train, train, test, ... so the id order alone does not give the split
        n_tr, n_te = train_per_class, test_per_class
        while n_tr or n_te:
            if n_tr:
                order.append("train")
                n_tr -= 1
            if n_te:
                order.append("test")
                n_te -= 1
        for i, s in enumerate(order):
            img_id += 1
            species = name.split(".", 1)[1]
            rel = f"{name}/{species}_{img_id:04d}_{100 + i}.jpg"
            path = root / "images" / rel
            write_image(path, _size(i, size), seed=_seed(c, i, s))
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c + 1}")
            split.append(f"{img_id} {1 if s == 'train' else 0}")
            boxes.append(f"{img_id} 2.0 3.0 30.0 31.0")
            for part in range(1, 16):
                parts.append(f"{img_id} {part} {5.0 + part} {6.0 + part} {part % 2}")
            (fx.train if s == "train" else fx.test).append((str(path), c))
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(names)))
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (root / "parts").mkdir(parents=True, exist_ok=True)
    (root / "parts" / "part_locs.txt").write_text("\n".join(parts) + "\n")
    part_names = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
                  "nape", "right eye", "right leg", "right wing", "tail", "throat"]
    (root / "parts" / "parts.txt").write_text("".join(f"{k + 1} {n}\n" for k, n in enumerate(part_names)))
    return fx


# ---------------------------------------------------------------------- Stanford Cars
CARS_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi S4 Sedan 2007", "BMW M3 Coupe 2012"]


def _cars_annotations(rows: List[Tuple[str, int]], with_class: bool = True) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for j, (fname, cls) in enumerate(rows):
        arr[0, j]["bbox_x1"] = np.array([[2]], dtype=np.uint8)
        arr[0, j]["bbox_y1"] = np.array([[3]], dtype=np.uint8)
        arr[0, j]["bbox_x2"] = np.array([[30]], dtype=np.uint16)
        arr[0, j]["bbox_y2"] = np.array([[31]], dtype=np.uint16)
        if with_class:
            arr[0, j]["class"] = np.array([[cls]], dtype=np.uint8)
        arr[0, j]["fname"] = np.array([fname])
    return arr


def make_cars(base: Path, classes: int = 3, train_per_class: int = 6, test_per_class: int = 3,
              size=(40, 40)) -> FixtureSet:
    """``base/stanford_cars/...`` in torchvision's StanfordCars layout; returns root = base."""
    import scipy.io

    folder = base / "stanford_cars"
    names = (CARS_CLASSES + [f"Car Model {k} 2010" for k in range(len(CARS_CLASSES), classes)])[:classes]
    fx = FixtureSet(base, "cars", names)
    rows = {"train": [], "test": []}
    for split, n, sub in (("train", train_per_class, "cars_train"), ("test", test_per_class, "cars_test")):
        k = 0
        # classes interleaved in the annotation order, as in the real files
        for i in range(n):
            for c in range(classes):
                k += 1
                fname = f"{k:05d}.jpg"
                write_image(folder / sub / fname, _size(k, size), seed=_seed(c, i, split))
                rows[split].append((fname, c + 1))
                (fx.train if split == "train" else fx.test).append((str(folder / sub / fname), c))
    (folder / "devkit").mkdir(parents=True, exist_ok=True)
    class_names = np.empty((1, classes), dtype=object)
    class_names[0, :] = names
    scipy.io.savemat(str(folder / "devkit" / "cars_meta.mat"), {"class_names": class_names})
    scipy.io.savemat(str(folder / "devkit" / "cars_train_annos.mat"), {"annotations": _cars_annotations(rows["train"])})
    scipy.io.savemat(str(folder / "devkit" / "cars_test_annos.mat"),
                     {"annotations": _cars_annotations(rows["test"], with_class=False)})
    scipy.io.savemat(str(folder / "cars_test_annos_withlabels.mat"), {"annotations": _cars_annotations(rows["test"])})
    return fx


# ---------------------------------------------------------------------- FGVC-Aircraft
#: deliberately not in sorted order; names with a space and a slash, like the real ones
AIRCRAFT_VARIANTS = ["Cessna 172", "707-320", "F-16A/B", "A300B4"]
AIRCRAFT_FAMILY = {"Cessna 172": "Cessna 172", "707-320": "Boeing 707", "F-16A/B": "F-16", "A300B4": "A300"}
AIRCRAFT_MAKER = {"Cessna 172": "Cessna", "707-320": "Boeing", "F-16A/B": "Lockheed Martin", "A300B4": "Airbus"}


def make_aircraft(base: Path, classes: int = 3, train_per_class: int = 6, test_per_class: int = 3,
                  size=(40, 40)) -> FixtureSet:
    """``base/fgvc-aircraft-2013b/data/...`` in torchvision's FGVCAircraft layout; returns root = base."""
    data = base / "fgvc-aircraft-2013b" / "data"
    names = (AIRCRAFT_VARIANTS + [f"Variant-{k}" for k in range(len(AIRCRAFT_VARIANTS), classes)])[:classes]
    fx = FixtureSet(base, "aircraft", names)
    lines = {"train": [], "val": [], "test": []}
    img = 1025794
    for c, v in enumerate(names):
        for split, n in (("trainval", train_per_class), ("test", test_per_class)):
            for i in range(n):
                img += 7
                stem = f"{img:07d}"
                path = data / "images" / f"{stem}.jpg"
                write_image(path, _size(i, size), seed=_seed(c, i, split))
                if split == "test":
                    lines["test"].append(f"{stem} {v}")
                    fx.test.append((str(path), c))
                else:
                    lines["train" if i % 2 == 0 else "val"].append(f"{stem} {v}")
                    fx.train.append((str(path), c))
    # annotation files list images in id order, as in the archive
    lines["trainval"] = sorted(lines["train"] + lines["val"])
    fam = {v: AIRCRAFT_FAMILY.get(v, v) for v in names}
    mak = {v: AIRCRAFT_MAKER.get(v, v) for v in names}
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in names))
    (data / "families.txt").write_text("".join(f"{f}\n" for f in dict.fromkeys(fam.values())))
    (data / "manufacturers.txt").write_text("".join(f"{m}\n" for m in dict.fromkeys(mak.values())))
    for split, ls in lines.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(sorted(ls)) + "\n")
        fl = [f"{line.split(' ', 1)[0]} {fam[line.split(' ', 1)[1]]}" for line in sorted(ls)]
        ml = [f"{line.split(' ', 1)[0]} {mak[line.split(' ', 1)[1]]}" for line in sorted(ls)]
        (data / f"images_family_{split}.txt").write_text("\n".join(fl) + "\n")
        (data / f"images_manufacturer_{split}.txt").write_text("\n".join(ml) + "\n")
        (data / f"images_{split}.txt").write_text("\n".join(line.split(" ", 1)[0] for line in sorted(ls)) + "\n")
    (data / "images_box.txt").write_text("".join(f"{Path(p).stem} 1 2 30 31\n" for p, _ in fx.train + fx.test))
    # the reader must follow variants.txt/trainval order, not ours
    order = {Path(p).stem: (p, y) for p, y in fx.train}
    fx.train = [order[line.split(" ", 1)[0]] for line in lines["trainval"]]
    order = {Path(p).stem: (p, y) for p, y in fx.test}
    fx.test = [order[line.split(" ", 1)[0]] for line in sorted(lines["test"])]
    return fx


# ---------------------------------------------------------------------- ImageFolder
def make_imagefolder_set(base: Path, classes: int = 3, train_per_class: int = 6, test_per_class: int = 3,
                         size=(40, 40)) -> FixtureSet:
    """``base/{train,test}/<class>/*.jpg``; class folder names sort in label order."""
    names = [f"class_{c}" for c in range(classes)]
    fx = FixtureSet(base, "imagefolder", names)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(names):
            for i in range(n):
                p = write_image(base / split / name / f"{i:03d}.jpg", _size(i, size), seed=_seed(c, i, split))
                (fx.train if split == "train" else fx.test).append((str(p), c))
    return fx


MAKERS = {"cub": make_cub, "cars": make_cars, "aircraft": make_aircraft, "imagefolder": make_imagefolder_set}


def make_dataset(kind: str, base: Path, **kw) -> FixtureSet:
    """``kind`` in cub, cars, aircraft, imagefolder."""
    return MAKERS[kind](base, **kw)
