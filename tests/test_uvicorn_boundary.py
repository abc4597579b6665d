"""The HTTP listener's hold on uvicorn internals is checked, not assumed (web/uvicorn_boundary)."""

import pytest
import uvicorn

from private_api import Requirement
from web import uvicorn_boundary
from web.uvicorn_boundary import PINNED_VERSION, UvicornMismatch, check


def test_the_installed_uvicorn_is_the_pinned_series_with_everything_the_protocol_uses() -> None:
    assert uvicorn.__version__.startswith(PINNED_VERSION + ".")
    check(uvicorn.__version__)  # raises on any missing requirement


def test_another_uvicorn_series_fails_with_one_line_naming_both() -> None:
    with pytest.raises(UvicornMismatch) as mismatch:
        check("0.99.0")
    message = str(mismatch.value)
    assert "\n" not in message
    assert message.startswith(
        f"uvicorn 0.99.0 is installed, the adapter requires uvicorn {PINNED_VERSION}.x"
    )
    assert mismatch.value.name == "uvicorn"


def test_a_requirement_uvicorn_no_longer_meets_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = Requirement("uvicorn.protocols.http.h11_impl:H11Protocol.no_such_method", ("self",))
    monkeypatch.setattr(uvicorn_boundary, "REQUIRES", (*uvicorn_boundary.REQUIRES, gone))
    with pytest.raises(UvicornMismatch, match=r"H11Protocol\.no_such_method is missing"):
        check(uvicorn.__version__)
