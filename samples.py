"""Small synthetic studies to try the adapter with (``dicom-adapter sample``).

Someone who has just installed the adapter has no scanner at hand, and must
not need real patient data to see it receive, record and process a study.
This module writes a few small, valid DICOM Part 10 files instead: per
study one CT Image Storage series (a 64x64 water cylinder in air with a
bone rod that moves from slice to slice, 12 bits stored in 16) and one
Secondary Capture image (an 8-bit MONOCHROME2 gradient).  Every type 1 and
type 2 attribute of the modules the two IODs require is present, so the
files pass a strict reader (and DCMTK), and they are obviously fake: the
patient is ``SAMPLE^PATIENT^N``, ID ``SAMPLE-000N``, and every UID is new.

The test suite has its own builders (``tests/dicom.py``) for the edge cases
it needs; this is the plain, valid study a user sends first, kept apart so
production code does not depend on the tests.

Files go to ``FOLDER/study-N/ct/NNN.dcm`` and ``FOLDER/study-N/sc/001.dcm``.
Nothing is ever overwritten: each study takes the first ``study-N`` folder
that does not exist yet, so running the command again adds studies.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from spool.incoming import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

SIZE = 64  # rows and columns of every image
PIXEL_SPACING_MM = 4.0  # 64 x 4 mm: a 256 mm field of view
SLICE_THICKNESS_MM = 5.0
AIR, WATER, BONE = 0, 1024, 2024  # CT stored values; HU = stored - 1024
CYLINDER_RADIUS = 25  # pixels
ROD_RADIUS, ROD_ORBIT = 4, 14  # pixels
MANUFACTURER = "dicom-adapter sample"


@dataclass(frozen=True)
class Sample:
    """What :func:`write_samples` wrote: the study folders and every file, in order."""

    studies: list[Path]
    files: list[Path]


@dataclass(frozen=True)
class _Study:
    number: int
    uid: str
    frame_of_reference_uid: str
    date: str
    time: str


def write_samples(folder: Path, studies: int = 1, instances: int = 5) -> Sample:
    """Write ``studies`` studies of ``instances`` CT images and one Secondary Capture each.

    ``folder`` is created if missing; existing files in it are left alone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = Sample(studies=[], files=[])
    for _ in range(studies):
        number, study_folder = _fresh_study_folder(folder)
        now = datetime.now()
        study = _Study(
            number=number,
            uid=generate_uid(),
            frame_of_reference_uid=generate_uid(),
            date=now.strftime("%Y%m%d"),
            time=now.strftime("%H%M%S"),
        )
        written.studies.append(study_folder)
        ct_series = generate_uid()
        width = max(3, len(str(instances)))
        for index in range(instances):
            path = study_folder / "ct" / f"{index + 1:0{width}d}.dcm"
            written.files.append(_write(path, _ct_image(study, ct_series, index)))
        path = study_folder / "sc" / f"{1:0{width}d}.dcm"
        written.files.append(_write(path, _secondary_capture(study, generate_uid())))
    return written


def _fresh_study_folder(folder: Path) -> tuple[int, Path]:
    """The first ``study-N`` under ``folder`` that does not exist, created now (atomically)."""
    number = 1
    while True:
        candidate = folder / f"study-{number}"
        try:
            candidate.mkdir()
        except FileExistsError:
            number += 1
            continue
        return number, candidate


def _common(ds: Dataset, study: _Study, sop_class: str) -> None:
    """Patient, General Study, General Equipment and SOP Common: the same in every image."""
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    # Patient: obviously fake, never a real name.
    ds.PatientName = f"SAMPLE^PATIENT^{study.number}"
    ds.PatientID = f"SAMPLE-{study.number:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(study.number)
    ds.AccessionNumber = f"SAMPLE{study.number:04d}"
    ds.StudyDescription = "dicom-adapter sample study"
    # General Equipment
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MANUFACTURER
    ds.SoftwareVersions = IMPLEMENTATION_VERSION_NAME
    # General Image
    ds.ContentDate = study.date
    ds.ContentTime = study.time


def _ct_image(study: _Study, series_uid: str, index: int) -> Dataset:
    """One axial slice of the phantom, 5 mm below the one before."""
    ds = Dataset()
    _common(ds, study, CTImageStorage)
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "sample CT phantom"
    # A head, unpaired: Laterality (type 2C) is then absent, not empty.
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    # Frame of Reference
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Image and CT Image
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    # Image Plane: the centre of the first pixel, patient coordinates in mm.
    z = 0.0 - index * SLICE_THICKNESS_MM  # not -0.0
    corner = -(SIZE / 2 - 0.5) * PIXEL_SPACING_MM
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [corner, corner, z]
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.SliceLocation = z
    # Image Pixel
    _pixel_module(ds, bits_stored=12)
    ds.PixelData = struct.pack(f"<{SIZE * SIZE}H", *_phantom(index))
    return ds


def _phantom(index: int) -> list[int]:
    """A 200 mm water cylinder (a head phantom) in air, with a bone rod that circles
    by 30 degrees a slice."""
    centre = (SIZE - 1) / 2
    angle = math.radians(30 * index)
    rod_x = centre + ROD_ORBIT * math.cos(angle)
    rod_y = centre + ROD_ORBIT * math.sin(angle)
    values = []
    for y in range(SIZE):
        for x in range(SIZE):
            if math.hypot(x - rod_x, y - rod_y) <= ROD_RADIUS:
                values.append(BONE)
            elif math.hypot(x - centre, y - centre) <= CYLINDER_RADIUS:
                values.append(WATER)
            else:
                values.append(AIR)
    return values


def _secondary_capture(study: _Study, series_uid: str) -> Dataset:
    """An 8-bit grey gradient, as a workstation screen capture would be stored."""
    ds = Dataset()
    _common(ds, study, SecondaryCaptureImageStorage)
    # General Series
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = "sample secondary capture"
    ds.BodyPartExamined = "HEAD"
    # SC Equipment
    ds.ConversionType = "WSD"
    # General Image: no Image Plane, so Patient Orientation (type 2C) is present.
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    # Image Pixel
    _pixel_module(ds, bits_stored=8)
    corner_to_corner = 2 * (SIZE - 1)
    ds.PixelData = bytes(
        (x + y) * 255 // corner_to_corner for y in range(SIZE) for x in range(SIZE)
    )
    return ds


def _pixel_module(ds: Dataset, bits_stored: int) -> None:
    """Image Pixel for a single grey frame; 12 bits stored go in 16 allocated."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = SIZE
    ds.Columns = SIZE
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def _write(path: Path, ds: Dataset) -> Path:
    """Write ``ds`` as a Part 10 file with our file meta, explicit VR little endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    path.parent.mkdir(exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True, overwrite=False)
    return path
