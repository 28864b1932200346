"""The HTTP contract runs over both fronts: the fast path (the default) and Quart alone."""

from __future__ import annotations

from dataclasses import replace

import pytest

from flashflow.settings import Settings

#: Modules whose tests run twice, with the fast path on and off: the routes it answers.
BOTH_FRONTS = frozenset({
    "test_auth", "test_bodies", "test_errors_and_status", "test_holds_wire", "test_metrics",
    "test_purchase_api", "test_quantities_api", "test_rate_limits", "test_sales_api",
    "test_validation",
})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if ("fast_path" in metafunc.fixturenames
            and metafunc.module.__name__.rpartition(".")[2] in BOTH_FRONTS):
        metafunc.parametrize("fast_path", [True, False], ids=["fast-path", "quart"])


@pytest.fixture
def fast_path() -> bool:
    """Whether the server answers the hot routes in front of Quart (the default: yes)."""
    return True


@pytest.fixture
def settings(settings: Settings, fast_path: bool) -> Settings:
    """The test's settings, with the fast path on or off."""
    return replace(settings, fast_path=fast_path)
