"""Where things live in the spool, and which paths count as instances.

::

    spool/
      .tmp/<node>/               each node's temporary files; never acknowledged, cleaned
                                 by that node at start (no node clears another's)
      quarantine/                unreadable files, each with a ``.reason`` sidecar
      superseded/<called AE>/<row id>-<name>   differing copies moved aside (duplicates)
      <called AE>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
      <called AE>/<StudyInstanceUID>/<SOPInstanceUID>.dcm   an instance with no series UID
      <called AE>/<anything>     hand-dropped files, any sub-path and name

A second copy of an instance already on disk gets ``<SOPInstanceUID>~N.dcm``;
intake then applies the AE's duplicates policy.
"""

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spool.names import RESERVED_FOLDERS, usable_uid, validate_ae_folder

TMP = ".tmp"
QUARANTINE = "quarantine"
SUPERSEDED = "superseded"


class UnsafeName(ValueError):
    """A name from the network failed validation and must not become a path."""


@dataclass(frozen=True)
class SpoolLayout:
    root: Path
    node: str = ""  # ``[node] name``: whose temporary files ``tmp`` holds

    @property
    def tmp(self) -> Path:
        """This node's incoming files: on a spool several nodes share, each has its own."""
        return self.root / TMP / self.node if self.node else self.root / TMP

    def tmp_folders(self) -> list[Path]:
        """Where this node's leftover temporary files can be: its own folder, and ``.tmp/``
        itself (files a version before per-node folders left there)."""
        return list(dict.fromkeys([self.tmp, self.root / TMP]))

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    def superseded_path(self, called_ae: str, instance_id: int, name: str) -> Path:
        """Where a copy set aside by the duplicates policy goes: named by its row."""
        return self.root / SUPERSEDED / called_ae / f"{instance_id}-{name}"

    def ensure(self, called_aes: Iterable[str] = ()) -> None:
        """Create the spool's fixed folders and one drop folder per called AE."""
        for folder in (self.root, self.tmp, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)
        for called_ae in called_aes:
            ok, reason = validate_ae_folder(called_ae)
            if not ok:
                raise UnsafeName(reason)
            (self.root / called_ae).mkdir(exist_ok=True)

    def series_dir(self, called_ae: str, study_uid: str, series_uid: str | None) -> str:
        """The folder of one series (of the study, without a series UID), validated.

        The validated names hold no ``/`` and never start with a dot, so
        only a symlinked folder could lead out of the spool; three ``lstat``
        calls check that (``Path.resolve`` took twenty per instance).  Text,
        not a ``Path``: the SCP builds it for every instance, and ``pathlib``
        was 7% of its Python time.

        Raises
        ------
        UnsafeName
            If any part is not a valid AE title or a usable UID, or is a symlink.
        """
        parts = [called_ae, study_uid] if series_uid is None else [called_ae, study_uid, series_uid]
        checks = [validate_ae_folder(called_ae)] + [usable_uid(uid) for uid in parts[1:]]
        for ok, reason in checks:
            if not ok:
                raise UnsafeName(reason)
        root = os.fspath(self.root)
        folder = root
        for part in parts:
            folder = f"{folder}/{part}"
            try:
                if stat.S_ISLNK(os.lstat(folder).st_mode):
                    raise UnsafeName(f"{folder} is a symlink and could lead out of the spool")
            except FileNotFoundError:
                return "/".join([root, *parts])  # the rest is made new
        return folder

    @staticmethod
    def instance_name(sop_instance_uid: str, copy: int = 0) -> str:
        ok, reason = usable_uid(sop_instance_uid)
        if not ok:
            raise UnsafeName(reason)
        return f"{sop_instance_uid}.dcm" if copy == 0 else f"{sop_instance_uid}~{copy}.dcm"

    def called_ae_of(self, path: Path) -> str | None:
        """The AE folder a spool file sits under, None if it is not under one."""
        parts = path.relative_to(self.root).parts
        if len(parts) < 2 or parts[0] in RESERVED_FOLDERS:
            return None
        return parts[0]

    def candidate_paths(self) -> Iterator[str]:
        """Every file intake would look at, as path text: in an AE folder, not under a
        dot or reserved folder, never through a symlinked folder.

        Text, not ``Path``: a scan of a million files would spend seconds
        building ``Path`` objects it mostly only looks up in the ledger.
        """
        for top in os.scandir(self.root):
            if not top.is_dir(follow_symlinks=False) or top.name in RESERVED_FOLDERS:
                continue
            if top.name.startswith("."):
                continue
            for folder, dirs, files in os.walk(top.path, followlinks=False):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if not name.startswith("."):
                        yield os.path.join(folder, name)

    def is_temporary(self, path: Path) -> bool:
        """True for a path under ``.tmp/``: a writer's file before it is published."""
        return path.is_relative_to(self.root / TMP)

    def is_candidate(self, path: Path) -> bool:
        """True for a path intake should look at: in an AE folder, no dot part."""
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return False
        if len(parts) < 2 or parts[0] in RESERVED_FOLDERS:
            return False
        return not any(part.startswith(".") for part in parts)
