"""Names from the network never escape the spool."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spool.layout import SpoolLayout, UnsafeName
from spool.names import validate_ae_title, validate_uid


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.1", "2.25.1" + "0" * 58])
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid) == (True, "")


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "../../etc",
        "1.2/3",
        "1..2",
        "1.02",
        ".1",
        "1.",
        "1.2.3 ",
        "1" * 65,
        "1.2\x00",
        "\u0661.\u0662",  # Arabic-Indic digits are not ASCII digits
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert validate_uid(uid)[0] is False


@pytest.mark.parametrize(
    "ae, ok",
    [
        ("STORESCU", True),
        ("CT 01", True),
        ("A" * 16, True),
        ("A" * 17, False),
        ("", False),
        ("    ", False),
        ("BAD\\AE", False),
        ("BAD\nAE", False),
        ("ÄE", False),
    ],
)
def test_ae_titles(ae: str, ok: bool) -> None:
    assert validate_ae_title(ae)[0] is ok


@given(
    ae=st.text(max_size=20),
    study=st.text(max_size=70),
    series=st.text(max_size=70),
    sop=st.text(max_size=70),
)
def test_any_text_stays_under_the_spool_or_is_refused(
    ae: str, study: str, series: str, sop: str
) -> None:
    layout = SpoolLayout(Path("/srv/spool"))
    try:
        path = Path(layout.series_dir(ae, study, series)) / layout.instance_name(sop)
    except UnsafeName:
        return
    resolved = path.resolve()
    assert resolved.is_relative_to(Path("/srv/spool").resolve())
    assert resolved.parent.parent.parent.parent == Path("/srv/spool").resolve()
    assert layout.is_candidate(path)


def test_a_symlinked_folder_in_the_spool_is_refused(tmp_path: Path) -> None:
    """Someone with access to the spool links a study folder elsewhere: no file follows it."""
    layout = SpoolLayout(tmp_path / "spool")
    layout.ensure(["AE"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (layout.root / "AE" / "1.2.3").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeName, match="symlink"):
        layout.series_dir("AE", "1.2.3", "1.2.3.4")
    (layout.root / "AE" / "1.2.5").mkdir()
    assert Path(layout.series_dir("AE", "1.2.5", "1.2.5.6")) == layout.root / "AE/1.2.5/1.2.5.6"
