"""Each route's rules are found from its path and method, and the layers refuse to start out of
order."""

from __future__ import annotations

import pytest

from payments.app import LAYER_ORDER, check_layer_order, routes
from payments.http.rules import MONEY, PUBLIC, READ, RouteTable

TABLE = RouteTable(routes())


def test_money_moving_routes_require_a_key_and_count_against_the_transfer_tier() -> None:
    for path in ("/api/v1/transactions", "/api/v1/transactions/12/reverse"):
        _, rules = TABLE.find(path, "POST")
        assert rules == MONEY
        assert rules.idempotency == "required"
        assert "transfer" in rules.tiers
    assert TABLE.find("/api/v1/transactions", "GET")[1].cached_view == "transactions"
    assert TABLE.find("/api/v1/accounts", "POST")[1].idempotency == "accepted"


def test_templates_and_defaults() -> None:
    assert TABLE.find("/api/v1/transactions/12", "GET") == ("/api/v1/transactions/{id}", READ)
    assert TABLE.find("/api/v1/transactions/12", "HEAD")[1] == READ
    # An unknown path or method under /api/v1 is an authenticated read; elsewhere, public.
    assert TABLE.find("/api/v1/nowhere", "GET") == ("unmatched", READ)
    assert TABLE.find("/api/v1/accounts", "DELETE") == ("/api/v1/accounts", READ)
    assert TABLE.find("/nowhere", "GET") == ("unmatched", PUBLIC)
    assert TABLE.find("/api/v1/health", "GET")[1] == PUBLIC
    login = TABLE.find("/api/v1/auth/login", "POST")[1]
    assert login.public
    assert login.tiers == ("auth", "login")


def test_the_layers_refuse_to_start_out_of_order() -> None:
    check_layer_order(list(LAYER_ORDER))
    swapped = [LAYER_ORDER[0], LAYER_ORDER[1], LAYER_ORDER[3], LAYER_ORDER[2], *LAYER_ORDER[4:]]
    with pytest.raises(RuntimeError, match="outermost first"):
        check_layer_order(swapped)
    with pytest.raises(RuntimeError, match="outermost first"):
        check_layer_order(list(LAYER_ORDER[:-1]))
