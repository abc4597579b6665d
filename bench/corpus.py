"""Build (and cache) the benchmark corpora.

Corpora are made with the test suite's own DICOM helpers (``tests/dicom.py``),
with UIDs drawn from a seeded counter instead of pydicom's random generator,
so two builds with the same sizes give byte-identical files.

    python bench/corpus.py --corpus var/bench-corpus            # quick: 200 CT, 1000 small
    python bench/corpus.py --corpus var/bench-corpus --full     # 500 CT, 2000 small, 1 GB

A corpus folder holds a ``done.json`` marker written last; a folder with a
marker matching the requested spec is reused as is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import dicom as dicom_helpers  # noqa: E402

QUICK = {"ct": 200, "small": 1000}
FULL = {"ct": 500, "small": 2000}
LARGE_BYTES = 1 << 30
UID_ROOT = "1.2.826.0.1.3680043.10.1199."  # fixed root for benchmark UIDs only
MARKER = "done.json"


def _uid_counter(seed: str) -> Callable[..., str]:
    """Return a ``generate_uid`` stand-in that yields ``<root><seed>.<n>``."""
    state = {"n": 0}

    def generate_uid(*_args: object, **_kwargs: object) -> str:
        state["n"] += 1
        return f"{UID_ROOT}{seed}.{state['n']}"

    return generate_uid


def _build(folder: Path, spec: dict[str, int], seed: str, make: Callable[[Path], None]) -> Path:
    marker = folder / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec:
                return folder
        except ValueError:
            pass
    if folder.exists():
        shutil.rmtree(folder)
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    original = dicom_helpers.generate_uid
    dicom_helpers.generate_uid = _uid_counter(seed)
    try:
        make(partial)
    finally:
        dicom_helpers.generate_uid = original
    (partial / MARKER).write_text(json.dumps(spec))
    partial.rename(folder)
    return folder


def build_ct(base: Path, count: int) -> Path:
    """``count`` CT instances, 512x512 16-bit (about 0.5 MB each)."""
    spec = {"kind": "ct", "count": count, "rows": 512, "columns": 512}
    return _build(
        base / f"ct-{count}",
        spec,
        "1",
        lambda d: dicom_helpers.make_study(d, count, rows=512, columns=512),
    )


def build_small(base: Path, count: int) -> Path:
    """``count`` CT instances, 16x16 16-bit (a few KB each)."""
    spec = {"kind": "small", "count": count, "rows": 16, "columns": 16}
    return _build(
        base / f"small-{count}",
        spec,
        "2",
        lambda d: dicom_helpers.make_study(d, count, rows=16, columns=16),
    )


def build_large(base: Path, size: int = LARGE_BYTES) -> Path:
    """One Enhanced CT multi-frame instance with about ``size`` bytes of pixels."""
    spec = {"kind": "large", "count": 1, "bytes": size}
    return _build(
        base / f"large-{size}",
        spec,
        "3",
        lambda d: dicom_helpers.make_large_multiframe(d / "0001.dcm", size),
    )


def corpus_files(folder: Path) -> list[Path]:
    """The DICOM files of a built corpus, in name order."""
    return sorted(folder.glob("*.dcm"))


def build_all(base: Path, ct: int, small: int, large: bool) -> dict[str, Path]:
    """Build (or reuse) every requested corpus; return name -> folder."""
    base.mkdir(parents=True, exist_ok=True)
    corpora = {}
    if ct > 0:
        corpora["ct"] = build_ct(base, ct)
    if small > 0:
        corpora["small"] = build_small(base, small)
    if large:
        corpora["large"] = build_large(base)
    return corpora


def add_corpus_folder(parser: argparse.ArgumentParser) -> None:
    """``--corpus``, for every bench script."""
    parser.add_argument(
        "--corpus",
        type=Path,
        default=ROOT / "var" / "bench-corpus",
        help="cache folder for the corpora (default: var/bench-corpus)",
    )


def add_workdir(parser: argparse.ArgumentParser) -> None:
    """``--workdir``, for the bench scripts that start receivers."""
    parser.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "var" / "bench-work",
        help="where receivers write (default var/bench-work; use a real disk, "
        "not tmpfs, or fsync costs nothing)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Corpus folder and sizes, shared by this script, ``run.py`` and ``export.py``."""
    add_corpus_folder(parser)
    parser.add_argument(
        "--ct",
        type=int,
        default=None,
        help=f"CT instances, 512x512 (default {QUICK['ct']}, --full {FULL['ct']})",
    )
    parser.add_argument(
        "--small",
        type=int,
        default=None,
        help=f"small instances, 16x16 (default {QUICK['small']}, --full {FULL['small']})",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the full benchmark sizes, plus one 1 GB multi-frame instance",
    )


def resolve(args: argparse.Namespace) -> dict[str, Path]:
    sizes = FULL if args.full else QUICK
    ct = sizes["ct"] if args.ct is None else args.ct
    small = sizes["small"] if args.small is None else args.small
    return build_all(args.corpus, ct, small, args.full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    for name, folder in resolve(args).items():
        files = corpus_files(folder)
        size = sum(f.stat().st_size for f in files)
        print(f"{name}: {len(files)} files, {size / 1e6:.1f} MB in {folder}")


if __name__ == "__main__":
    main()
