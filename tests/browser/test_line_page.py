"""The buyer's page in front of a sale with a waiting room, in a real headless Chromium."""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import replace
from datetime import timedelta
from functools import partial

import httpx
import trio

from actors import WaitingRoom
from flashflow.http.line import install_line
from flashflow.http.wire import purchase_path, queue_path, sale_path, ticket_path

from ..helpers import fetch, live_server, make_sale, pg
from . import test_page
from .test_page import UUID, run_in_browser

pytestmark = test_page.pytestmark

#: A line that opens an hour early, admits quickly, and gives each admission a minute.
ROOM = WaitingRoom(opens_before_s=3600, admit_per_s=50.0, window_s=60)

#: How long a browser waits before taking an ended stream up again (the server's retry).
RECONNECT_MS: int = inspect.signature(install_line).parameters["retry_ms"].default

#: What the page says of a ticket at number 1,234 with 1,000 ahead at 5 a second: from the
#: ticket's own estimate, and as recomputed from a ``line`` event.
WORDS_OF_A_PLACE = """import("/static/line.js").then((line) => [
  line.ticketText({status: "waiting", position: 1234, estimatedWaitSeconds: 201})[0],
  line.ticketText(line.movedOn({status: "waiting", position: 1234},
                               {lineLength: 5000, admittedUpTo: 233, admitRate: 5}))[0],
])"""


async def test_a_buyer_joins_the_line_before_the_opening_and_buys_on_their_turn(settings):
    """Before the opening the page offers Join, not Buy; joined, it says the place is drawn at
    the opening, then that it is the buyer's turn (still so after a reload: the ticket is kept),
    and Buy then sends the admission: the purchase is in PostgreSQL."""

    def scenario(page, base_url):
        from playwright.sync_api import expect

        # Scheduled once the server and the browser are up, so the opening is seconds away.
        sale = trio.from_thread.run(partial(
            make_sale, settings.database_url, stock=3, product="Queued pair",
            starts_in=timedelta(seconds=5), waiting_room=ROOM))
        listed(base_url, sale.id)
        page.goto(base_url + "/")
        expect(page.locator("#product")).to_have_text("Queued pair")
        join = page.get_by_role("button", name="Join the line")
        buy = page.get_by_role("button", name="Buy now")
        expect(join).to_be_visible()
        expect(buy).to_be_hidden()
        page.get_by_label("Your user id").fill("in-line")
        join.click()
        line = page.locator("#line")
        expect(line).to_contain_text("You're in line — your place is drawn when the sale opens")
        expect(join).to_be_hidden()
        expect(buy).to_be_hidden()
        expect(line).to_contain_text(re.compile(r"It's your turn: buy within [01]:\d\d"),
                                     timeout=20_000)
        page.reload()
        expect(line).to_contain_text("It's your turn")
        expect(join).to_be_hidden()
        buy.click()
        expect(page.locator("#result")).to_contain_text(re.compile("Purchase confirmed.*" + UUID))
        return sale, page.evaluate(WORDS_OF_A_PLACE)

    with trio.fail_after(60):
        async with live_server(settings) as server:
            sale, words = await run_in_browser(scenario, server.base_url)
    assert words == ["You're in line: number 1,234, about 3 minutes"] * 2
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id FROM purchases WHERE sale_id = $1", sale.id)
    assert [r["user_id"] for r in rows] == ["in-line"]


async def test_the_page_solves_the_lines_proof_of_work_in_a_worker(settings):
    """With a proof of work of 8 bits asked of every join, the page's Join solves it in a Web
    Worker and the ticket is taken: the page says so and the ticket is in PostgreSQL."""
    settings = replace(settings, line_proof_bits=8)
    sale = await make_sale(settings.database_url, starts_in=timedelta(minutes=5),
                           waiting_room=ROOM)

    def scenario(page, base_url):
        from playwright.sync_api import expect

        workers: list[str] = []
        page.on("worker", lambda worker: workers.append(worker.url))
        page.goto(base_url + "/")
        page.get_by_label("Your user id").fill("solver")
        page.get_by_role("button", name="Join the line").click()
        expect(page.locator("#line")).to_contain_text("You're in line", timeout=15_000)
        page.reload()
        expect(page.locator("#line")).to_contain_text("You're in line")
        expect(page.get_by_role("button", name="Join the line")).to_be_hidden()
        return workers

    with trio.fail_after(60):
        async with live_server(settings) as server:
            workers = await run_in_browser(scenario, server.base_url)
    assert [w.rsplit("/", 1)[-1] for w in workers] == ["proof-worker.js"]
    rows = await pg(settings.database_url, fetch,
                    "SELECT user_id FROM tickets WHERE sale_id = $1", sale.id)
    assert [r["user_id"] for r in rows] == ["solver"]


async def test_the_line_closing_while_the_buyer_waits_says_sold_out(settings):
    """Second in a slow line for the last unit, the buyer sees their number; when the first
    buys it, the page says, live, that the line has closed sold out, and does not open the
    ticket's stream again."""
    sale = await make_sale(settings.database_url, stock=1, product="Last pair",
                           waiting_room=replace(ROOM, admit_per_s=0.1))

    def scenario(page, base_url):
        from playwright.sync_api import expect

        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
        page.goto(base_url + "/")
        expect(page.locator("#product")).to_have_text("Last pair")
        page.get_by_label("Your user id").fill("second-in")
        first = httpx.post(base_url + queue_path(sale.id), json={"userId": "first-in"},
                           timeout=10).json()["data"]
        page.get_by_role("button", name="Join the line").click()
        line = page.locator("#line")
        expect(line).to_contain_text("You're in line: number 2")
        token = admission_of(base_url, sale.id, first["ticket"])
        bought = httpx.post(base_url + purchase_path(sale.id), timeout=10,
                            json={"userId": "first-in", "admissionToken": token})
        assert bought.status_code == 201, bought.text
        expect(line).to_contain_text("Sold out — the line has closed")
        expect(page.get_by_role("button", name="Buy now")).to_be_hidden()
        page.wait_for_timeout(RECONNECT_MS + 1000)
        return [url for url in streams if "/queue/" in url]

    with trio.fail_after(60):
        async with live_server(settings) as server:
            streams = await run_in_browser(scenario, server.base_url)
    assert len(streams) == 1  # the last event closed the stream: it was not taken up again


def admission_of(base_url: str, sale_id: object, ticket: str) -> str:
    """The admission token of a ticket, once its turn comes (another client's)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        body = httpx.get(base_url + ticket_path(sale_id, ticket), timeout=10).json()["data"]
        if body["status"] == "admitted":
            return body["admissionToken"]
        time.sleep(0.1)
    raise AssertionError(f"ticket {ticket} was not admitted in time")


def listed(base_url: str, sale_id: object) -> None:
    """Wait until the server's catalogue has the sale just scheduled."""
    deadline = time.monotonic() + 10
    while httpx.get(base_url + sale_path(sale_id), timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"sale {sale_id} never listed")
        time.sleep(0.1)
