"""Dataset sources: COD10K (two layouts), paired image/mask folders, synthetic scenes.

A source yields :class:`Candidate` rows (an id, a split, where the bytes are) and a list
of files it skipped with reasons; ``jobs/prepare_data.py`` decodes, validates and writes.
Folders may be local paths or any fsspec URI.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .. import storage

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# COD release layout: TestDataset/<name> -> split name.
_RELEASE_TEST_SPLITS = {"cod10k": "test", "camo": "test-camo", "chameleon": "test-chameleon", "nc4k": "test-nc4k"}


@dataclass
class Candidate:
    """One sample to be validated and written. ``load`` returns (image bytes, mask bytes)."""

    image_id: str
    split: str
    source: str
    load: Callable[[], Tuple[bytes, Optional[bytes]]]
    origin: str = ""


@dataclass
class SourceListing:
    description: str
    candidates: List[Candidate] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)  # (what, status, reason)
    task: Optional[str] = None  # what the dataset is for (samadapter/tasks.py); written to _dataset.json
    classes: Optional[List[str]] = None  # several classes: their names, class i = value i of the index masks


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not posixpath.basename(path).startswith(".")


class _Folder:
    """Listing and reading of a folder URI through one filesystem."""

    def __init__(self, uri: str):
        self.uri = str(uri).rstrip("/")
        self.fs, self.path = storage.fsspec_filesystem(self.uri)

    def isdir(self, *parts: str) -> bool:
        return self.fs.isdir(posixpath.join(self.path, *parts))

    def subdirs(self, *parts: str) -> List[str]:
        base = posixpath.join(self.path, *parts)
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False) if self.fs.isdir(p))

    def images(self, *parts: str) -> Dict[str, str]:
        """stem -> path of the image files directly in a sub-folder."""
        base = posixpath.join(self.path, *parts)
        out: Dict[str, str] = {}
        for p in sorted(self.fs.ls(base, detail=False)):
            if _is_image(p):
                out.setdefault(_stem(p), p)
        return out

    def reader(self, image_path: str, mask_path: Optional[str]):
        fs = self.fs

        def load():
            with fs.open(image_path, "rb") as f:
                image = f.read()
            mask = None
            if mask_path is not None:
                with fs.open(mask_path, "rb") as f:
                    mask = f.read()
            return image, mask

        return load


def _pair(folder: _Folder, listing: SourceListing, images: Dict[str, str], masks: Dict[str, str], split: str, source_of) -> None:
    for stem, image_path in images.items():
        mask_path = masks.get(stem)
        listing.candidates.append(
            Candidate(stem, split, source_of(stem), folder.reader(image_path, mask_path), origin=image_path)
        )
    for stem in sorted(set(masks) - set(images)):
        listing.skipped.append((masks[stem], "missing_image", "a mask without an image of the same name"))


def detect_cod_layout(uri: str) -> Tuple[str, str]:
    """(layout, root) of a COD dataset folder: ``cod10k-v3`` or ``cod-release``.

    The folder itself or one of its sub-folders may hold the layout.
    """
    folder = _Folder(uri)
    roots = [""] + [d for d in (folder.subdirs() if folder.isdir() else [])]
    for sub in roots:
        if folder.isdir(sub, "Train", "Image") or folder.isdir(sub, "Test", "Image"):
            return "cod10k-v3", posixpath.join(folder.uri, sub) if sub else folder.uri
        if folder.isdir(sub, "TrainDataset") or folder.isdir(sub, "TestDataset"):
            return "cod-release", posixpath.join(folder.uri, sub) if sub else folder.uri
    raise ValueError(
        f"{uri}: not a COD dataset folder. Expected the COD10K-v3 layout (Train/Image, Train/GT_Object, "
        "Test/Image, Test/GT_Object) or the COD release layout (TrainDataset/{Imgs,GT}, "
        "TestDataset/{COD10K,CAMO,CHAMELEON,NC4K}/{Imgs,GT}); for other folders use --source paired"
    )


def _cod_source_of(stem: str) -> str:
    low = stem.lower()
    if low.startswith("cod10k"):
        return "cod10k"
    if low.startswith("camourflage") or low.startswith("camo"):
        return "camo"
    return "cod"


def cod_listing(uri: str, include_noncam: bool = False) -> SourceListing:
    """Candidates of a COD10K-v3 or COD release folder (layout detected and reported)."""
    layout, root = detect_cod_layout(uri)
    folder = _Folder(root)
    if layout == "cod10k-v3":
        listing = SourceListing(f"COD10K-v3 layout (Train/Test with Image and GT_Object) at {root}", task="camouflage")
        for top, split in (("Train", "train"), ("Test", "test")):
            if not folder.isdir(top, "Image"):
                continue
            images = folder.images(top, "Image")
            masks = folder.images(top, "GT_Object") if folder.isdir(top, "GT_Object") else {}
            if not include_noncam:
                for stem in [s for s in images if "-noncam-" in s.lower()]:
                    listing.skipped.append((images.pop(stem), "non_camouflaged", "NonCAM image (--include-noncam keeps them)"))
            _pair(folder, listing, images, masks, split, lambda s: "cod10k")
        return listing
    listing = SourceListing(f"COD release layout (TrainDataset, TestDataset/<name>) at {root}", task="camouflage")
    if folder.isdir("TrainDataset", "Imgs"):
        masks = folder.images("TrainDataset", "GT") if folder.isdir("TrainDataset", "GT") else {}
        _pair(folder, listing, folder.images("TrainDataset", "Imgs"), masks, "train", _cod_source_of)
    if folder.isdir("TestDataset"):
        for name in folder.subdirs("TestDataset"):
            if not folder.isdir("TestDataset", name, "Imgs"):
                continue
            split = _RELEASE_TEST_SPLITS.get(name.lower(), "test-" + name.lower())
            masks = folder.images("TestDataset", name, "GT") if folder.isdir("TestDataset", name, "GT") else {}
            _pair(folder, listing, folder.images("TestDataset", name, "Imgs"), masks, split, lambda s, n=name: n.lower())
    return listing


def paired_listing(images_uri: str, masks_uri: str, split: str, source: str = "paired") -> SourceListing:
    """Any image folder and mask folder, matched by file stem."""
    images = _Folder(images_uri)
    masks = _Folder(masks_uri)
    for f, what in ((images, "--images"), (masks, "--masks")):
        if not f.isdir():
            raise ValueError(f"{what} {f.uri} is not a folder")
    listing = SourceListing(f"paired folders {images.uri} + {masks.uri} -> split {split!r}")
    mask_files = masks.images()
    image_files = images.images()
    for stem, image_path in image_files.items():
        mask_path = mask_files.get(stem)

        def load(ip=image_path, mp=mask_path):
            image = images.reader(ip, None)()[0]
            mask = masks.reader(mp, None)()[0] if mp else None
            return image, mask

        listing.candidates.append(Candidate(stem, split, source, load, origin=image_path))
    for stem in sorted(set(mask_files) - set(image_files)):
        listing.skipped.append((mask_files[stem], "missing_image", "a mask without an image of the same name"))
    return listing


def indexed_listing(images_uri: str, masks_uri: str, split: str, classes_uri: str) -> SourceListing:
    """Images and index masks (PNG, mode P or L: the pixel's value is its class), matched by
    file stem, with the class names in ``classes_uri`` (a text file, one name a line: line i
    names class i, line 0 the background). A mask with a value past the last class is skipped."""
    from .. import storage

    try:
        names = [line.strip() for line in storage.read_bytes(classes_uri).decode().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ValueError(f"--classes {classes_uri}: no such file (one class name a line, the background first)") from None
    if len(names) < 2:
        raise ValueError(f"--classes {classes_uri}: {len(names)} class name(s); several classes means at least 2 "
                         "(the background first)")
    listing = paired_listing(images_uri, masks_uri, split, source="indexed")
    listing.description = f"indexed masks {masks_uri} + images {images_uri} -> split {split!r}, {len(names)} classes"
    listing.task, listing.classes = "multiclass", names
    return listing


def synthetic_listing(num_train: int, num_test: int, size: int = 256, seed: int = 0, kind: str = "camouflage") -> SourceListing:
    """Synthetic scenes of ``kind`` (camouflage, shadow, polyp; generated lazily,
    deterministic from the seed)."""
    from .synthetic import SCENE_CLASSES, SCENES, encode_jpeg
    from .labels import encode_label_png
    from .transforms import encode_mask_png

    if kind not in SCENES:
        raise ValueError(f"unknown synthetic scene kind {kind!r}; choose one of {sorted(SCENES)}")
    make_scene = SCENES[kind]
    prefix = "synthetic" if kind == "camouflage" else f"synthetic-{kind}"

    if num_train < 0 or num_test < 0 or num_train + num_test == 0:
        raise ValueError("--num-train and --num-test must be >= 0 and not both 0")
    if size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {size}")
    listing = SourceListing(f"synthetic {kind} scenes ({num_train} train, {num_test} test, {size}px, seed {seed})",
                            task=kind, classes=list(SCENE_CLASSES[kind]) if kind in SCENE_CLASSES else None)
    encode = encode_label_png if listing.classes else encode_mask_png
    # Test scenes use indices after the training ones: no scene is in both splits.
    for split, start, count in (("train", 0, num_train), ("test", num_train, num_test)):
        for i in range(start, start + count):

            def load(i=i):
                image, mask = make_scene(seed, i, size)
                return encode_jpeg(image), encode(mask)

            listing.candidates.append(Candidate(f"{prefix}-{seed}-{i:06d}", split, prefix, load))
    return listing



# --------------------------------------------------- shadow and polyp datasets
# Each released layout: (split, image folder, mask folder) relative to the dataset root.
TASK_LAYOUTS: Dict[str, List[Tuple[str, Tuple[str, ...], Tuple[str, ...]]]] = {
    # ISTD: train_A shadow images, train_B shadow masks (train_C, the shadow-free images, unused)
    "istd": [("train", ("train", "train_A"), ("train", "train_B")), ("test", ("test", "test_A"), ("test", "test_B"))],
    "sbu": [("train", ("SBUTrain4KRecoveredSmall", "ShadowImages"), ("SBUTrain4KRecoveredSmall", "ShadowMasks")),
            ("test", ("SBU-Test", "ShadowImages"), ("SBU-Test", "ShadowMasks"))],
    # Released without a split: all of it is split by file name (``split_of``).
    "kvasir": [("all", ("images",), ("masks",))],
    "cvc": [("all", ("Original",), ("Ground Truth",))],
}
TASK_SOURCE_NAMES = {"istd": "ISTD", "sbu": "SBU", "kvasir": "Kvasir-SEG", "cvc": "CVC-ClinicDB"}
TASK_OF_SOURCE = {"istd": "shadow", "sbu": "shadow", "kvasir": "polyp", "cvc": "polyp"}


def split_of(stem: str, test_percent: float) -> str:
    """``test`` for a stable ``test_percent`` % of file names (by hash), else ``train``."""
    import hashlib

    bucket = int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) % 10000
    return "test" if bucket < test_percent * 100 else "train"


def detect_task_layout(name: str, uri: str) -> str:
    """The root of dataset ``name``'s released layout: ``uri`` or one of its sub-folders
    (CVC-ClinicDB also as ``PNG/`` or ``TIF/`` inside)."""
    folder = _Folder(uri)
    if not folder.isdir():
        raise ValueError(f"--input {uri} is not a folder")
    layout = TASK_LAYOUTS[name]
    subs = [""] + folder.subdirs()
    subs += [posixpath.join(s, t) for s in subs[1:] for t in folder.subdirs(s)]
    for sub in subs:
        if any(folder.isdir(sub, *images) for _, images, _ in layout):
            return posixpath.join(folder.uri, sub) if sub else folder.uri
    expected = "; ".join(f"{'/'.join(i)} + {'/'.join(m)}" for _, i, m in layout)
    raise ValueError(f"{uri}: not a {TASK_SOURCE_NAMES[name]} folder. Expected its released layout: {expected} "
                     "(in the folder or one level down); for other folders use --source paired")


def task_listing(name: str, uri: str, test_percent: float = 10.0) -> SourceListing:
    """Candidates of a shadow (``istd``, ``sbu``) or polyp (``kvasir``, ``cvc``) dataset in
    its released layout. Datasets released without a split are split by file name:
    ``test_percent`` % to ``test`` (stable across runs and machines), the rest ``train``."""
    if name not in TASK_LAYOUTS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(TASK_LAYOUTS)}")
    root = detect_task_layout(name, uri)
    folder = _Folder(root)
    listing = SourceListing(f"{TASK_SOURCE_NAMES[name]} layout at {root}", task=TASK_OF_SOURCE[name])
    for split, images_dir, masks_dir in TASK_LAYOUTS[name]:
        if not folder.isdir(*images_dir):
            continue
        if not folder.isdir(*masks_dir):
            raise ValueError(f"{root}: {'/'.join(images_dir)} has no mask folder {'/'.join(masks_dir)}")
        images, masks = folder.images(*images_dir), folder.images(*masks_dir)
        if split == "all":
            listing.description += f" (split by file name: {test_percent:g} % test)"
            for part in ("train", "test"):
                chosen = {k: v for k, v in images.items() if split_of(k, test_percent) == part}
                # masks without an image are reported once, with the train part
                part_masks = {k: v for k, v in masks.items() if k in chosen or (part == "train" and k not in images)}
                _pair(folder, listing, chosen, part_masks, part, lambda s: name)
        else:
            _pair(folder, listing, images, masks, split, lambda s: name)
    if not listing.candidates:
        raise ValueError(f"{root}: no images found in the {TASK_SOURCE_NAMES[name]} layout")
    return listing
