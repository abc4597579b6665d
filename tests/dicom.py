"""Build DICOM Part 10 test instances on disk at test time.

The receiver has to be exercised with real encodings (every transfer syntax it
may be offered, non-image objects, very large multi-frame files), and keeping
binary fixtures in the repository would hide what is being tested. These
helpers write small, valid files whose content is deterministic apart from the
freshly generated UIDs, plus a way to compare the dataset bytes of a received
file with the original without re-encoding either of them.
"""

import hashlib
import random
import struct
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    BasicTextSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    RTPlanStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

_MODALITY = {
    CTImageStorage: "CT",
    EnhancedCTImageStorage: "CT",
    MRImageStorage: "MR",
    SecondaryCaptureImageStorage: "OT",
    BasicTextSRStorage: "SR",
    RTPlanStorage: "RTPLAN",
}

# Image storage classes and the Bits Allocated their pixel data is built with.
_IMAGE_BITS = {
    CTImageStorage: 16,
    EnhancedCTImageStorage: 16,
    MRImageStorage: 16,
    SecondaryCaptureImageStorage: 8,
}

# Transfer syntaxes whose pixel data pydicom writes natively (not encapsulated).
_NATIVE_SYNTAXES = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
}

# Encapsulated syntaxes served with stand-in codestreams: the receiver never
# decodes pixels, so only the framing markers and a plausible size matter.
# Values are (start markers, end marker, rough compression ratio).
_FAKE_CODESTREAMS = {
    JPEGBaseline8Bit: (b"\xff\xd8", b"\xff\xd9", 10),
    JPEGLosslessSV1: (b"\xff\xd8", b"\xff\xd9", 2),
    JPEGLSLossless: (b"\xff\xd8", b"\xff\xd9", 2),
    JPEG2000Lossless: (b"\xff\x4f\xff\x51", b"\xff\xd9", 2),
    JPEG2000: (b"\xff\x4f\xff\x51", b"\xff\xd9", 10),
}

# Roughly what headers and tables add to a real JPEG/J2K codestream.
_CODESTREAM_OVERHEAD = 320

# JPEG Baseline is an 8-bit process, so images in it are built 8-bit.
_EIGHT_BIT_SYNTAXES = {JPEGBaseline8Bit}

_LOSSY_SYNTAXES = {JPEGBaseline8Bit, JPEG2000}

_CHUNK = 4 * 1024 * 1024

# How far from the end dataset_bytes() looks for a trailing padding element.
_PADDING_WINDOW = 1024 * 1024

_PADDING_TAG = {True: b"\xfc\xff\xfc\xff", False: b"\xff\xfc\xff\xfc"}

# Explicit VR elements with these VRs have a 4-byte length after 2 reserved bytes.
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def make_instance(
    path: Path,
    *,
    sop_class_uid: str = CTImageStorage,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str = "PAT001",
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    instance_number: int = 1,
    trailing_padding: int = 0,
) -> Path:
    """Write one DICOM Part 10 file and return its path.

    Image classes (CT, MR, Enhanced CT: 16-bit, Secondary Capture: 8-bit)
    get MONOCHROME2 pixel data; any other SOP class is written without pixel
    data (Basic Text SR gets a small report tree so a sequence is on the wire).

    Parameters
    ----------
    path : Path
        Where to write; parent folders are created.
    sop_class_uid, transfer_syntax_uid : str
        What the file is and how its dataset is encoded. Native syntaxes and
        Deflate are written by pydicom; RLE Lossless is really encoded with
        pydicom's own encoder; JPEG and JPEG 2000 get deterministic stand-in
        codestreams of a plausible size, because decoding is never exercised.
    study_uid, series_uid, sop_instance_uid : str, optional
        Fresh UIDs are generated when not given.
    patient_id : str
        Also used to derive the patient name.
    rows, columns, frames : int
        Image geometry; ignored for non-image classes.
    instance_number : int
        Value of (0020,0013).
    trailing_padding : int
        If non-zero, append a (FFFC,FFFC) Data Set Trailing Padding element of
        this many bytes, which senders such as DCMTK storescu drop.

    Returns
    -------
    Path
        `path`, for chaining.

    Raises
    ------
    ValueError
        If `transfer_syntax_uid` is not one these helpers can produce.
    """
    if (
        transfer_syntax_uid not in _NATIVE_SYNTAXES
        and transfer_syntax_uid != RLELossless
        and transfer_syntax_uid not in _FAKE_CODESTREAMS
    ):
        raise ValueError(f"unsupported transfer syntax {transfer_syntax_uid}")

    ds = _base_dataset(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        patient_id=patient_id,
        instance_number=instance_number,
    )
    if sop_class_uid in _IMAGE_BITS:
        bits = _IMAGE_BITS[sop_class_uid]
        if transfer_syntax_uid in _EIGHT_BIT_SYNTAXES:
            bits = 8
        _add_image_pixel_module(ds, rows=rows, columns=columns, frames=frames, bits=bits)
        _add_pixel_data(ds, transfer_syntax_uid)
    elif sop_class_uid == BasicTextSRStorage:
        _add_text_report(ds)
    if trailing_padding:
        ds.DataSetTrailingPadding = bytes(trailing_padding)
    _write(path, ds, transfer_syntax_uid)
    return path


def make_study(folder: Path, count: int, **kwargs: Any) -> list[Path]:
    """Write `count` instances of one study and series as ``NNNN.dcm``.

    Parameters
    ----------
    folder : Path
        Destination folder; created if missing.
    count : int
        Number of instances; instance numbers run 1..`count`.
    **kwargs
        Passed to :func:`make_instance`. `study_uid` and `series_uid` are
        generated once and shared unless given.

    Returns
    -------
    list of Path
        The written files in instance-number order.
    """
    kwargs.setdefault("study_uid", generate_uid())
    kwargs.setdefault("series_uid", generate_uid())
    return [
        make_instance(folder / f"{number:04d}.dcm", instance_number=number, **kwargs)
        for number in range(1, count + 1)
    ]


def make_mixed_set(folder: Path) -> list[Path]:
    """Write one study that covers every supported transfer syntax.

    A receiver has to negotiate and store each of these unchanged, so the set
    mixes SOP classes and encodings inside a single study.

    Parameters
    ----------
    folder : Path
        Destination folder; created if missing.

    Returns
    -------
    list of Path
        Eight files, named after their class and transfer syntax.
    """
    study_uid = generate_uid()
    combos = [
        ("ct-implicit", CTImageStorage, ImplicitVRLittleEndian),
        ("mr-explicit", MRImageStorage, ExplicitVRLittleEndian),
        ("ct-bigendian", CTImageStorage, ExplicitVRBigEndian),
        ("sc-deflate", SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian),
        ("ct-jpeg-baseline", CTImageStorage, JPEGBaseline8Bit),
        ("mr-j2k-lossless", MRImageStorage, JPEG2000Lossless),
        ("ct-rle", CTImageStorage, RLELossless),
        ("sr-explicit", BasicTextSRStorage, ExplicitVRLittleEndian),
    ]
    return [
        make_instance(
            folder / f"{name}.dcm",
            sop_class_uid=sop_class,
            transfer_syntax_uid=syntax,
            study_uid=study_uid,
            instance_number=number,
        )
        for number, (name, sop_class, syntax) in enumerate(combos, start=1)
    ]


def make_odd_deflated(path: Path, **kwargs: Any) -> Path:
    """Write a Deflated Explicit VR Little Endian file whose deflated data set is odd-length.

    PS3.5 A.5 pads a deflated stream to even length with one trailing NUL;
    pydicom does, but not every writer does, and such a file must still be
    stored and sent.  The dataset is deflated here (raw deflate, as the
    standard says) without the pad; the instance number is varied until the
    stream comes out odd.

    Parameters
    ----------
    path : Path
        Where to write.
    **kwargs
        Passed to :func:`make_instance` (any transfer syntax is replaced).

    Returns
    -------
    Path
        `path`.
    """
    kwargs.pop("transfer_syntax_uid", None)
    sop_instance_uid = kwargs.pop("sop_instance_uid", None) or generate_uid()
    for number in range(1, 100):
        plain = make_instance(
            path,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            sop_instance_uid=sop_instance_uid,
            instance_number=number,
            **kwargs,
        )
        start, _ = _dataset_span(plain)
        raw = plain.read_bytes()
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        deflated = compressor.compress(raw[start:]) + compressor.flush()
        if len(deflated) % 2:
            break
    else:
        raise AssertionError("no odd-length deflated stream in 99 tries")
    ds = dcmread(plain, stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + deflated)
    return path


def make_large_multiframe(
    path: Path,
    size_bytes: int,
    *,
    sop_class_uid: str = EnhancedCTImageStorage,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_id: str = "PAT001",
    instance_number: int = 1,
    columns: int = 512,
) -> Path:
    """Write a 16-bit multi-frame instance with about `size_bytes` of pixels.

    The header is written by pydicom without Pixel Data; the (7FE0,0010)
    element header and deterministic pixel bytes are then appended in chunks,
    so memory use stays at a few MB whatever the size.

    Parameters
    ----------
    path : Path
        Where to write; parent folders are created.
    size_bytes : int
        Target Pixel Data length. Frames are 512 rows by `columns` (fewer
        rows when the target is smaller than one frame), so the real length
        is the nearest whole number of frames.
    sop_class_uid, study_uid, series_uid, sop_instance_uid, patient_id,
    instance_number
        As for :func:`make_instance`.
    columns : int
        Frame width.

    Returns
    -------
    Path
        `path`, for chaining.
    """
    rows = max(1, min(512, size_bytes // (2 * columns)))
    frame_bytes = rows * columns * 2
    frames = max(1, round(size_bytes / frame_bytes))
    ds = _base_dataset(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        study_uid=study_uid or generate_uid(),
        series_uid=series_uid or generate_uid(),
        patient_id=patient_id,
        instance_number=instance_number,
    )
    _add_image_pixel_module(ds, rows=rows, columns=columns, frames=frames, bits=16)
    _write(path, ds, ExplicitVRLittleEndian)

    length = frames * frame_bytes  # even: two bytes per pixel
    with path.open("ab") as fp:
        fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        for chunk in _deterministic_bytes(str(ds.SOPInstanceUID), length):
            fp.write(chunk)
    return path


def dataset_bytes(path: Path) -> bytes:
    """Return the encoded dataset stored after the File Meta Information.

    Works on the raw bytes, never re-encoding, so it shows whether a receiver
    stored exactly what it was sent. A (FFFC,FFFC) Data Set Trailing Padding
    element at the very end is left out because senders may drop it (DCMTK
    storescu does). For Deflated Explicit VR Little Endian the compressed
    bytes are returned as stored and no padding is removed, since the padding
    is inside the deflate stream.

    Parameters
    ----------
    path : Path
        A DICOM Part 10 file whose meta group starts with (0002,0000).

    Returns
    -------
    bytes
        The dataset bytes.

    Raises
    ------
    ValueError
        If the file has no preamble and 'DICM', does not start its meta group
        with (0002,0000), or has no Transfer Syntax UID.
    """
    start, end = _dataset_span(path)
    with path.open("rb") as fp:
        fp.seek(start)
        return fp.read(end - start)


def dataset_digest(path: Path) -> str:
    """Return the SHA-256 hex digest of :func:`dataset_bytes`, streaming.

    Reading in chunks keeps memory flat for multi-GB files.

    Parameters
    ----------
    path : Path
        A DICOM Part 10 file whose meta group starts with (0002,0000).

    Returns
    -------
    str
        Hex digest of the same bytes :func:`dataset_bytes` returns.
    """
    start, end = _dataset_span(path)
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        fp.seek(start)
        remaining = end - start
        while remaining:
            chunk = fp.read(min(_CHUNK, remaining))
            if not chunk:
                raise ValueError(f"{path} is shorter than expected")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def _base_dataset(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    study_uid: str,
    series_uid: str,
    patient_id: str,
    instance_number: int,
) -> Dataset:
    """Return the patient, study, series and SOP attributes every file has."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = _MODALITY.get(sop_class_uid, "OT")
    ds.Manufacturer = "dicom-adapter tests"
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"Test^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    return ds


def _add_image_pixel_module(
    ds: Dataset, *, rows: int, columns: int, frames: int, bits: int
) -> None:
    """Add grayscale Image Pixel attributes (12 of 16 bits, or 8 of 8 stored)."""
    if ds.Modality in ("CT", "MR"):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        # Derived from the series so that every slice shares it.
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID])
    else:
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if ds.Modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1


def _add_pixel_data(ds: Dataset, transfer_syntax_uid: str) -> None:
    """Add Pixel Data encoded, or encapsulated, for `transfer_syntax_uid`."""
    indexes = range(ds.get("NumberOfFrames", 1))
    if transfer_syntax_uid in _NATIVE_SYNTAXES:
        big_endian = transfer_syntax_uid == ExplicitVRBigEndian
        data = b"".join(_native_frame(ds, index, big_endian) for index in indexes)
        ds.add_new(0x7FE00010, "OW" if ds.BitsAllocated == 16 else "OB", data)
        return

    if transfer_syntax_uid == RLELossless:
        encoded = [_rle_frame(ds, _native_frame(ds, index, False)) for index in indexes]
    else:
        raw_length = ds.Rows * ds.Columns * ds.BitsAllocated // 8
        encoded = [
            _fake_codestream(transfer_syntax_uid, f"{ds.SOPInstanceUID}:{index}", raw_length)
            for index in indexes
        ]
    if transfer_syntax_uid in _LOSSY_SYNTAXES:
        ds.LossyImageCompression = "01"
    ds.add_new(0x7FE00010, "OB", encapsulate(encoded, has_bot=True))


def _native_frame(ds: Dataset, index: int, big_endian: bool) -> bytes:
    """Return one frame of a diagonal gradient, distinct per frame."""
    top = (1 << ds.BitsStored) - 1
    values = [
        (row * 7 + column * 3 + index * 101) & top
        for row in range(ds.Rows)
        for column in range(ds.Columns)
    ]
    if ds.BitsAllocated == 8:
        return bytes(values)
    return struct.pack(f"{'>' if big_endian else '<'}{len(values)}H", *values)


def _rle_frame(ds: Dataset, frame: bytes) -> bytes:
    """Return little-endian `frame` RLE encoded by pydicom's pure-Python plugin."""
    return RLELosslessEncoder.encode(
        frame,
        rows=ds.Rows,
        columns=ds.Columns,
        number_of_frames=1,
        samples_per_pixel=1,
        bits_allocated=ds.BitsAllocated,
        bits_stored=ds.BitsStored,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        encoding_plugin="pydicom",
    )


def _fake_codestream(transfer_syntax_uid: str, seed: str, raw_length: int) -> bytes:
    """Return a deterministic stand-in codestream with the syntax's markers."""
    start, end, ratio = _FAKE_CODESTREAMS[transfer_syntax_uid]
    body = random.Random(seed).randbytes(_CODESTREAM_OVERHEAD + raw_length // ratio)
    return start + body + end


def _add_text_report(ds: Dataset) -> None:
    """Add a minimal Basic Text SR document tree (one finding)."""
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "No acute findings."
    ds.ContentSequence = Sequence([finding])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """Return a code sequence item."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _write(path: Path, ds: Dataset, transfer_syntax_uid: str) -> None:
    """Write `ds` as a Part 10 file; pydicom fills in the meta group length."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)


def _deterministic_bytes(seed: str, length: int) -> Iterator[bytes]:
    """Yield `length` reproducible pseudo-random bytes in chunks."""
    generator = random.Random(seed)
    remaining = length
    while remaining:
        size = min(_CHUNK, remaining)
        yield generator.randbytes(size)
        remaining -= size


def _dataset_span(path: Path) -> tuple[int, int]:
    """Return the byte range of the dataset, without trailing padding."""
    with path.open("rb") as fp:
        start, transfer_syntax = _read_meta(fp, path)
        end = fp.seek(0, 2)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            return start, end
        window = min(_PADDING_WINDOW, end - start)
        fp.seek(end - window)
        tail = fp.read(window)
    padding = _trailing_padding_length(
        tail,
        implicit=transfer_syntax == ImplicitVRLittleEndian,
        little_endian=transfer_syntax != ExplicitVRBigEndian,
    )
    return start, end - padding


def _read_meta(fp: BinaryIO, path: Path) -> tuple[int, str]:
    """Return the dataset offset and the Transfer Syntax UID from the raw meta."""
    head = fp.read(144)
    if head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise ValueError(f"{path} lacks a preamble, 'DICM' or (0002,0000) first")
    (group_length,) = struct.unpack("<I", head[140:144])
    meta = fp.read(group_length)
    offset = 0
    while offset + 8 <= len(meta):
        group, element, vr = struct.unpack_from("<HH2s", meta, offset)
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", meta, offset + 8)
            offset += 12
        else:
            (length,) = struct.unpack_from("<H", meta, offset + 6)
            offset += 8
        if (group, element) == (0x0002, 0x0010):
            value = meta[offset : offset + length]
            return 144 + group_length, value.rstrip(b"\x00 ").decode("ascii")
        offset += length
    raise ValueError(f"{path} has no (0002,0010) Transfer Syntax UID")


def _trailing_padding_length(tail: bytes, *, implicit: bool, little_endian: bool) -> int:
    """Return the size of a (FFFC,FFFC) element ending exactly at the end of `tail`.

    Only the tail is searched; a candidate counts only if its header is well
    formed and its length reaches exactly the end, so pixel bytes that happen
    to look like the tag are not mistaken for padding.
    """
    tag = _PADDING_TAG[little_endian]
    length_format = "<I" if little_endian else ">I"
    header = 8 if implicit else 12
    position = tail.find(tag)
    while position != -1:
        if implicit or tail[position + 4 : position + 8] == b"OB\x00\x00":
            field = tail[position + header - 4 : position + header]
            if len(field) == 4:
                (length,) = struct.unpack(length_format, field)
                if position + header + length == len(tail):
                    return len(tail) - position
        position = tail.find(tag, position + 1)
    return 0
