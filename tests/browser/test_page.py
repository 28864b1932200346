"""The buyer's page in a real headless Chromium (Debian's), driven by Playwright.

Playwright's sync API runs in a worker thread with a plain asyncio loop of its own, while
the trio test serves the real app; each scenario launches and closes its own browser.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flashflow.http.wire import CURRENT_PURCHASE

from ..helpers import fetch, live_server, make_sale, pg

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

#: What is missing to run these tests, each with the command that installs it.
MISSING = [need for present, need in (
    (CHROMIUM.exists(), f"Debian's chromium at {CHROMIUM} (apt-get install chromium)"),
    (importlib.util.find_spec("playwright") is not None,
     "Playwright for Python (pip install playwright, part of '.[test]')"),
) if not present]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason="browser tests need " + " and ".join(MISSING)),
]


def in_browser(scenario: Callable[..., Any], base_url: str, **page_options: Any) -> Any:
    """Run ``scenario(page, base_url)`` in a fresh headless Chromium; for a worker thread."""
    from playwright.sync_api import sync_playwright

    # trio-asyncio's loop policy would hand Playwright a trio-bound loop: use a plain one.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(**page_options)
                page.set_default_timeout(10_000)
                return scenario(page, base_url)
            finally:
                browser.close()
    finally:
        asyncio.set_event_loop_policy(None)


async def run_in_browser(scenario: Callable[..., Any], base_url: str, **page_options: Any) -> Any:
    """:func:`in_browser` from trio; Playwright's own timeouts bound the thread."""
    return await trio.to_thread.run_sync(
        lambda: in_browser(scenario, base_url, **page_options))


def buy_as(base_url: str, user_id: str) -> int:
    """Buy from another client, as another shopper would."""
    return httpx.post(base_url + CURRENT_PURCHASE, json={"userId": user_id}, timeout=10).status_code


async def test_a_shopper_buys_and_sees_the_confirmation_on_a_phone(settings):
    """On a phone-width screen a shopper buys, sees the purchase id, and sees it again later."""
    await make_sale(settings.database_url, stock=5, product="Headphones")

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(base_url + "/")
        expect(page.locator("#product")).to_have_text("Headphones")
        expect(page.locator("#stock")).to_have_text("5")
        expect(page.locator("#badge")).to_have_text("On sale now")
        expect(page.locator("#countdown")).to_contain_text("Ends in")
        expect(page.get_by_label("Units")).to_be_hidden()  # one unit a buyer: no picker
        page.get_by_label("Your user id").fill("alice")
        page.get_by_role("button", name="Buy now").click()
        expect(page.locator("#result")).to_contain_text(re.compile("Purchase confirmed.*" + UUID))
        expect(page.locator("#stock")).to_have_text("4")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        page.reload()
        expect(page.get_by_label("Your user id")).to_have_value("alice")
        expect(page.locator("#result")).to_contain_text(re.compile("You bought this.*" + UUID))
        return overflow

    with trio.fail_after(60):
        async with live_server(settings) as server:
            overflow = await run_in_browser(scenario, server.base_url,
                                            viewport={"width": 360, "height": 740})
    assert overflow <= 0


async def test_a_shopper_picks_how_many_units_and_hears_when_too_few_are_left(settings):
    """With a per-user limit of 3 the page offers 1 to 3 units; a shopper buys 3 (one row of 3
    units, the stock falls by 3), and the next one asking 3 of the 2 left is told so in a
    dialog naming what is left."""
    sale = await make_sale(settings.database_url, stock=5, product="Socks", per_user_limit=3)

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(base_url + "/")
        expect(page.locator("#stock")).to_have_text("5")
        picker = page.get_by_label("Units")
        expect(picker).to_be_visible()
        expect(picker.locator("option")).to_have_text(["1", "2", "3"])
        expect(page.locator("#quantity-help")).to_have_text("Up to 3 per buyer, all in one "
                                                            "purchase.")
        page.get_by_label("Your user id").fill("alice")
        picker.select_option("3")
        page.get_by_role("button", name="Buy now").click()
        expect(page.locator("#result")).to_contain_text(
            re.compile("Purchase confirmed for 3 units.*" + UUID))
        expect(page.locator("#stock")).to_have_text("2")
        page.get_by_label("Your user id").fill("bobby")
        picker.select_option("3")
        page.get_by_role("button", name="Buy now").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("Not enough left")
        expect(dialog).to_contain_text("only 2 units are left")
        expect(dialog).to_contain_text("You may buy up to 2.")

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id, quantity FROM purchases WHERE sale_id = $1", sale.id)
    assert [(r["user_id"], r["quantity"]) for r in rows] == [("alice", 3)]


async def test_the_stock_falls_live_when_another_client_buys(settings):
    """The stock figure and bar move without a reload when someone else buys."""
    await make_sale(settings.database_url, stock=3)

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(base_url + "/")
        expect(page.locator("#live")).to_have_text("Live")
        expect(page.locator("#stock")).to_have_text("3")
        assert buy_as(base_url, "bob-the-buyer") == 201
        expect(page.locator("#stock")).to_have_text("2")
        expect(page.locator("#stock-bar")).to_have_attribute("aria-valuenow", "2")
        assert buy_as(base_url, "carol-buyer") == 201
        expect(page.locator("#stock")).to_have_text("1")

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)


async def test_a_sold_out_sale_shows_an_accessible_modal(settings):
    """After another client takes the last unit, Buy opens a Sold out dialog usable by keyboard."""
    await make_sale(settings.database_url, stock=1)

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(base_url + "/")
        expect(page.locator("#stock")).to_have_text("1")
        assert buy_as(base_url, "early-bird") == 201
        expect(page.locator("#badge")).to_have_text("Sold out")
        page.get_by_label("Your user id").fill("late-comer")
        page.get_by_label("Your user id").press("Enter")
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("Sold out")
        expect(page.locator("#modal-close")).to_be_focused()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        expect(page.get_by_label("Your user id")).to_be_focused()
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="Buy now")).to_be_focused()
        page.keyboard.press("Enter")
        expect(dialog).to_contain_text("Sold out")
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        expect(page.get_by_role("button", name="Buy now")).to_be_focused()

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)


async def test_a_shopper_picks_one_of_two_open_sales_and_buys_from_it(settings):
    """With two sales open the page lists both; buying after a pick buys in the picked one."""
    await make_sale(settings.database_url, stock=5, product="Red pair",
                    lasts=timedelta(minutes=30))
    blue = await make_sale(settings.database_url, stock=4, product="Blue pair")

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(base_url + "/")
        expect(page.locator("#product")).to_have_text("Red pair")
        expect(page.locator("#sales")).to_be_visible()
        page.get_by_role("button", name=re.compile("Blue pair")).click()
        expect(page.locator("#product")).to_have_text("Blue pair")
        expect(page.locator("#stock")).to_have_text("4")
        page.get_by_label("Your user id").fill("picker")
        page.get_by_role("button", name="Buy now").click()
        expect(page.locator("#result")).to_contain_text(re.compile("Purchase confirmed.*" + UUID))
        expect(page.locator("#stock")).to_have_text("3")

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)
    rows = await pg(settings.database_url, fetch, "SELECT sale_id, user_id FROM purchases")
    assert [(r["sale_id"], r["user_id"]) for r in rows] == [(blue.id, "picker")]


async def test_a_signed_in_shopper_buys_with_the_token_from_the_link(settings):
    """Opened with #token=..., the page shows who is signed in, buys as them, and remembers it."""
    from dataclasses import replace

    from flashflow.tokens import mint

    settings = replace(settings, auth_jwt_secret="browser-secret-for-hs256-0123456789")
    await make_sale(settings.database_url, stock=5, product="Headphones")
    token = mint(settings, "alice")

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(f"{base_url}/#token={token}")
        expect(page.locator("#signed-in")).to_contain_text("Signed in as alice")
        expect(page.get_by_label("Your user id")).to_be_hidden()
        assert "token" not in page.url
        page.get_by_role("button", name="Buy now").click()
        expect(page.locator("#result")).to_contain_text(re.compile("Purchase confirmed.*" + UUID))
        page.reload()
        expect(page.locator("#signed-in")).to_contain_text("Signed in as alice")
        expect(page.locator("#result")).to_contain_text(re.compile("You bought this.*" + UUID))
        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("Your user id").fill("mallory")
        page.get_by_role("button", name="Buy now").click()
        expect(page.get_by_role("dialog")).to_contain_text("Please sign in")

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)


async def test_a_hold_counts_down_and_the_demo_pay_button_confirms_it(settings):
    """In the demo mode, Buy on a sale with holds shows the hold's countdown (by the server's
    clock) and a Pay button; Pay confirms it, in PostgreSQL too, and a reload says so."""
    settings = replace(settings, demo_payments=True)
    sale = await make_sale(settings.database_url, stock=2, product="Held pair", hold_seconds=90)

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(base_url + "/")
        expect(page.locator("#product")).to_have_text("Held pair")
        expect(page.locator("#hold-stats")).to_have_text("0 held awaiting payment · 0 in line")
        page.get_by_label("Your user id").fill("payer")
        page.get_by_role("button", name="Buy now").click()
        standing = page.locator("#standing")
        expect(standing).to_contain_text(re.compile(r"Held for you: pay within 1:[23]\d"))
        first = page.locator("#hold-left").text_content()
        expect(page.locator("#hold-left")).not_to_have_text(first, timeout=5000)
        expect(page.locator("#stock")).to_have_text("1")
        expect(page.locator("#hold-stats")).to_have_text("1 held awaiting payment · 0 in line")
        page.get_by_role("button", name="Pay now").click()
        expect(standing).to_contain_text(re.compile("Purchase confirmed.*" + UUID))
        expect(page.get_by_role("button", name="Pay now")).to_be_hidden()
        expect(standing).to_be_focused()
        page.reload()
        expect(page.locator("#standing")).to_contain_text(re.compile("Purchase confirmed.*" + UUID))

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id, confirmed_at FROM purchases WHERE sale_id = $1", sale.id)
    assert [r["user_id"] for r in rows] == ["payer"]
    assert rows[0]["confirmed_at"] is not None


async def test_a_second_buyer_sees_their_place_in_line_and_is_offered_the_unit_live(settings):
    """On a stock-1 sale held by someone else, Buy shows the place in line; it moves live as
    the line grows, and when the holder cancels the page offers the hold, with no Pay button
    outside the demo mode."""
    await make_sale(settings.database_url, stock=1, hold_seconds=60)

    def scenario(page, base_url):
        from playwright.sync_api import expect

        assert buy_as(base_url, "first-holder") == 201
        page.goto(base_url + "/")
        expect(page.locator("#badge")).to_have_text("All held: join the line")
        page.get_by_label("Your user id").fill("second")
        page.get_by_role("button", name="Buy now").click()
        standing = page.locator("#standing")
        expect(standing).to_contain_text("You're number 1 in line (of 1)")
        assert buy_as(base_url, "third-buyer") == 202
        expect(standing).to_contain_text("You're number 1 in line (of 2)")
        cancelled = httpx.delete(base_url + CURRENT_PURCHASE, params={"userId": "first-holder"},
                                 timeout=10)
        assert cancelled.status_code == 200, cancelled.text
        expect(standing).to_contain_text(re.compile(r"Held for you: pay within [01]:\d\d"))
        expect(page.get_by_role("button", name="Pay now")).to_be_hidden()

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)


async def test_a_signed_in_buyers_hold_that_runs_out_says_so(settings):
    """An unpaid hold lapses on the page, live, for a signed-in buyer too (whose own stream
    carries their token): it says the unit went back."""
    from flashflow.tokens import mint

    settings = replace(settings, auth_jwt_secret="browser-secret-for-hs256-0123456789")
    await make_sale(settings.database_url, stock=1, hold_seconds=3)
    token = mint(settings, "slow-payer")

    def scenario(page, base_url):
        from playwright.sync_api import expect

        page.goto(f"{base_url}/#token={token}")
        expect(page.locator("#signed-in")).to_contain_text("Signed in as slow-payer")
        page.get_by_role("button", name="Buy now").click()
        standing = page.locator("#standing")
        expect(standing).to_contain_text(re.compile(r"Held for you: pay within 0:0\d"))
        expect(standing).to_contain_text("Your hold ran out before payment", timeout=15_000)

    with trio.fail_after(60):
        async with live_server(settings) as server:
            await run_in_browser(scenario, server.base_url)
