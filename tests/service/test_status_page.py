"""The status page in a real browser: Debian's headless Chromium, driven by Playwright,
against the real service app on a real port, with a request that runs on Ray for a few
seconds (30 batches through a step that sleeps 0.2 s each) while the page watches."""
import csv
import os
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import async_playwright, expect

from etl_actors.eventlog import EventLog
from etl_actors.service.keys import create_key, revoke_key

from .conftest import create, finished, request, serving

CHROMIUM = os.environ.get("ETL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BATCHES, BATCH_ROWS = 30, 100
TITLE = "Slow <b>orders</b> & co"    # markup in data must show as text


def slow_service(tmp_path) -> dict:
    """A service whose run reads ``BATCHES`` CSV files of one batch each, one at a time,
    each held 0.2 s by ``service.slow_steps:pause``, priced per record. (One file per
    batch: the percent is bytes read of the total, and a file source reports a single
    file's bytes as its reader reads ahead, in lumps.)"""
    folder = tmp_path / "orders"
    folder.mkdir()
    for part in range(BATCHES):
        with open(folder / f"orders-{part:03d}.csv", "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["order_id", "amount"])
            writer.writerows((i, f"{i % 100}.25") for i in range(part * BATCH_ROWS, (part + 1) * BATCH_ROWS))
    return {
        "name": TITLE, "type": "Automation", "subtype": "data-pipeline",
        "connections": {"warehouse": f"sqlite:///{tmp_path}/warehouse.db"},
        "pipeline": {
            "source": {"type": "file", "path": str(folder), "format": "csv", "batchSize": BATCH_ROWS},
            "transformations": [{"id": "pause", "type": "function", "handler": "service.slow_steps:pause"}],
            "destination": {"type": "database", "connection": "warehouse", "table": "orders"},
        },
        "runtime": {"parallelism": 1, "extractors": 1, "max_in_flight": 1},
        "pricing": {"model": "per-record", "rate": 0.001},
    }


@asynccontextmanager
async def chromium_page():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            await browser.close()


async def sign_in(page, key: str) -> None:
    await page.fill("#api-key", key)
    await page.click("#login-form button[type=submit]")


async def percent_of(bar) -> float:
    return float(await bar.get_attribute("data-percent"))


_PERCENT_BETWEEN = """([id, low, high]) => {
    const bar = document.querySelector(`#running tr[data-request-id="${id}"] [role=progressbar]`);
    return bar !== null && bar.dataset.percent !== "" && +bar.dataset.percent > low && +bar.dataset.percent < high;
}"""


@pytest.mark.asyncio
async def test_status_page_follows_a_request_from_progress_to_charge(tmp_path, log_url, ray_local):
    log = EventLog(log_url)
    admin = create_key(log, "admin")
    async with serving(log_url) as api, chromium_page() as page:
        http = api.as_(admin)
        service_id = await create(http, slow_service(tmp_path))
        await page.goto(api.base + "/")

        await sign_in(page, admin[:-4] + "xxxx")
        await expect(page.locator("#login-error")).to_contain_text("not accepted")
        await expect(page.locator("#dashboard")).to_be_hidden()

        await sign_in(page, admin)
        await expect(page.locator("#dashboard")).to_be_visible()
        service_row = page.locator(f'#services tr[data-service-id="{service_id}"]')
        await expect(service_row.locator("td").first).to_have_text(TITLE)
        assert await service_row.locator("b").count() == 0
        await expect(service_row.locator("td").nth(5)).to_have_text("per-record, 0.001 USD")

        request_id = await request(http, service_id, {"customerId": "acme"})
        bar = page.locator(f'#running tr[data-request-id="{request_id}"] [role=progressbar]')
        await page.wait_for_function(_PERCENT_BETWEEN, arg=[request_id, 0, 50], timeout=30_000)
        before, shown_before = await bar.screenshot(), await percent_of(bar)
        await page.wait_for_timeout(1500)
        after, shown_after = await bar.screenshot(), await percent_of(bar)
        assert after != before, "the progress bar did not move in 1.5 s"
        assert shown_after > shown_before
        assert await bar.get_attribute("aria-valuenow") == f"{shown_after:.1f}"

        view = await finished(http, request_id)
        assert view["status"] == "success" and view["charge"]["amount"] == "3.00"   # 3,000 records at 0.001
        done = page.locator(f'#recent tr[data-request-id="{request_id}"]')
        await expect(done).to_have_attribute("data-status", "success")
        await expect(done.locator("td.charge")).to_have_attribute("data-amount", view["charge"]["amount"])
        await expect(done.locator("td.charge")).to_have_text("3.00 USD")
        await expect(page.locator(f'#running tr[data-request-id="{request_id}"]')).to_have_count(0)
        await expect(page.locator(f'#charges tr[data-request-id="{request_id}"] td.charge')).to_have_text("3.00 USD")

        bars = page.locator("#chart rect.bar")
        assert await bars.count() >= 1
        charted = await bars.evaluate_all("bars => bars.reduce((sum, b) => sum + Number(b.dataset.records), 0)")
        assert charted == view["outputs"]["recordsProcessed"] == BATCHES * BATCH_ROWS

        await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

        await page.reload()                       # the key is kept for the tab
        await expect(page.locator("#dashboard")).to_be_visible()
        await expect(done).to_have_attribute("data-status", "success")
        await expect(page.locator("#login")).to_be_hidden()

        revoke_key(log, admin)
        await expect(page.locator("#login-error")).to_contain_text("refused", timeout=10_000)
        await expect(page.locator("#dashboard")).to_be_hidden()
        assert await page.evaluate("sessionStorage.length") == 0
