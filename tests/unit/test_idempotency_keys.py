from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from payments.http.errors import ApiError
from payments.http.idempotency import fingerprint, read_key


def headers(*pairs: tuple[str, str]) -> Headers:
    return Headers(raw=[(name.lower().encode(), value.encode("latin-1")) for name, value in pairs])


def test_either_spelling_is_the_same_key() -> None:
    assert read_key(headers(("Idempotency-Key", "abc")), required=True) == "abc"
    assert read_key(headers(("X-Idempotency-Key", "abc")), required=True) == "abc"
    assert (
        read_key(headers(("Idempotency-Key", "abc"), ("X-Idempotency-Key", "abc")), required=True)
        == "abc"
    )
    assert read_key(headers(("Idempotency-Key", '"abc"')), required=True) == "abc"


@pytest.mark.parametrize(
    ("pairs", "code"),
    [((), "idempotency_key_missing"),
     ((("Idempotency-Key", ""),), "idempotency_key_invalid"),
     ((("Idempotency-Key", "x" * 256),), "idempotency_key_invalid"),
     ((("Idempotency-Key", "caf\xe9"),), "idempotency_key_invalid"),
     ((("Idempotency-Key", "tab\there"),), "idempotency_key_invalid"),
     ((("Idempotency-Key", "a"), ("X-Idempotency-Key", "b")), "idempotency_key_invalid")],
)  # fmt: skip
def test_bad_keys_are_400(pairs: tuple[tuple[str, str], ...], code: str) -> None:
    with pytest.raises(ApiError) as raised:
        read_key(headers(*pairs), required=True)
    assert raised.value.problem.code == code
    assert raised.value.problem.status == 400


def test_a_key_is_optional_where_no_money_moves() -> None:
    assert read_key(headers(), required=False) is None
    assert read_key(headers(("Idempotency-Key", "x" * 255)), required=False) == "x" * 255


def test_fingerprint_ignores_key_order_and_whitespace_only() -> None:
    assert fingerprint("POST", "/p", {"a": 1, "b": 2}) == fingerprint(
        "POST", "/p", {"b": 2, "a": 1}
    )
    assert fingerprint("POST", "/p", {"a": 1}) != fingerprint("POST", "/p", {"a": 2})
    assert fingerprint("POST", "/p", {"a": 1}) != fingerprint("POST", "/q", {"a": 1})
