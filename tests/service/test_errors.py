"""Every error is JSON, one line of it, with no traceback; bodies are size-limited."""
import pytest
from aiohttp import ClientSession, web
from yarl import URL

from etl_actors.service.app import make_app
from etl_actors.service.runner import Runner

from .conftest import create, orders_service, serving

pytestmark = pytest.mark.asyncio


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text and ".py" not in text


async def answer(response) -> tuple[int, dict, str]:
    text = await response.text()
    assert response.content_type == "application/json", (response.status, text)
    assert no_traceback(text), text
    return response.status, await response.json(), text


async def test_errors_are_json_without_traceback(tmp_path, log_url, keys):
    async with serving(log_url, runtime="local") as api:
        anonymous, wrong, admin = api.as_(None), api.as_("eak_aaaaaaaaaa_not-a-key"), api.as_(keys["admin"])
        async with anonymous.get("/services") as response:
            status, body, _ = await answer(response)
            assert status == 401 and "Bearer" in body["error"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with wrong.get("/status") as response:
            assert (await answer(response))[0] == 401
        async with admin.get("/requests/req_nothing") as response:
            assert (await answer(response))[:2] == (404, {"error": "not found"})
        async with admin.get("/no/such/route") as response:
            assert (await answer(response))[0] == 404
        async with admin.delete("/services") as response:
            assert (await answer(response))[0] == 405
        async with admin.post("/services", data=b"{not json", headers={"Content-Type": "application/json"}) \
                as response:
            status, body, _ = await answer(response)
            assert status == 400 and "JSON" in body["error"]
        async with admin.post("/services", data=b"x" * (2 * 2**20),
                              headers={"Content-Type": "application/json"}) as response:
            assert (await answer(response))[0] == 413
        service_id = await create(admin, orders_service(tmp_path))
        async with admin.post(f"/services/{service_id}/requests", json={"customerId": 7}) as response:
            assert (await answer(response))[0] == 400
        async with admin.post(f"/services/{service_id}/requests", json={"priority": "high"}) as response:
            status, body, _ = await answer(response)
            assert status == 400 and body["errors"] == [{"path": "priority", "message": "unknown key"}]
        for query in ("status=done", "limit=0", "limit=x"):
            async with admin.get(f"/requests?{query}") as response:
                assert (await answer(response))[0] == 400, query
        async with admin.get("/customers/acme/invoice?period=2026-13") as response:
            assert (await answer(response))[0] == 400
        async with admin.get("/pipelines/nothing/runs") as response:
            assert (await answer(response))[0] == 404


async def test_the_page_needs_no_key_and_is_served_from_the_static_folder(log_url):
    async with serving(log_url, runtime="local") as api:
        async with api.as_(None).get("/") as response:
            assert response.status in (200, 404)
            if response.status == 200:
                assert response.content_type == "text/html"
            else:
                assert (await answer(response))[0] == 404
        for path in ("/static/%2e%2e/keys.py", "/static/..%2fkeys.py", "/static/missing.js"):
            async with api.as_(None).get(URL(api.base + path, encoded=True)) as response:
                assert response.status in (403, 404), path
                assert "def create_key" not in await response.text()


class BrokenRunner(Runner):
    def accept(self, service_id: str, customer_id: str = "", inputs: dict | None = None) -> str:
        raise RuntimeError("the runner broke at /srv/etl/runner.py line 7")


async def test_an_unexpected_error_is_a_500_in_one_line_and_its_traceback_is_logged(tmp_path, log_url, keys,
                                                                                    caplog):
    app = make_app(log_url, runner=BrokenRunner(log_url, "local"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with ClientSession(f"http://{host}:{port}", headers={"Authorization": f"Bearer {keys['admin']}"}) \
                as admin:
            service_id = await create(admin, orders_service(tmp_path))
            async with admin.post(f"/services/{service_id}/requests", json={}) as response:
                status, body, text = await answer(response)
    finally:
        await runner.cleanup()
    assert status == 500 and "runner broke" not in text and body["error"].startswith("internal error")
    assert any("runner broke" in r.getMessage() or "runner broke" in (r.exc_text or "")
               for r in caplog.records if r.levelname == "ERROR")
