from __future__ import annotations

import base64

import pytest

from payments.http.errors import ApiError
from payments.http.pagination import decode_cursor, encode_cursor, page_limit

KEY = b"k" * 32


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(12345, KEY), KEY) == 12345


@pytest.mark.parametrize(
    "cursor",
    ["", "abc", base64.urlsafe_b64encode(b"99.forged-mac-xx").decode(), "%%%",
     encode_cursor(5, b"o" * 32)],
)  # fmt: skip
def test_cursors_we_did_not_issue_are_refused(cursor: str) -> None:
    with pytest.raises(ApiError) as raised:
        decode_cursor(cursor, KEY)
    assert raised.value.problem.code == "validation_error"


def test_page_limits() -> None:
    assert page_limit(None, 20, 100) == 20
    assert page_limit("100", 20, 100) == 100
    for bad in ("0", "101", "-1", "ten", "1.5", ""):
        with pytest.raises(ApiError):
            page_limit(bad, 20, 100)
