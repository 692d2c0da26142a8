"""The service API under concurrent load on one server process (functional, not timed:
``benchmarks/service_load.py`` measures): 20 new requests at once are all accepted, and
200 reads at once of those requests all answer with the request asked for."""
import asyncio

import pytest
from aiohttp import ClientSession, TCPConnector

from .conftest import PER_RECORD, create, orders_service, serving

POSTS, GETS = 20, 200


async def answer(http: ClientSession, method: str, path: str, **kwargs) -> tuple[int, dict]:
    async with http.request(method, path, **kwargs) as response:
        return response.status, await response.json()


@pytest.mark.asyncio
async def test_20_concurrent_requests_and_200_concurrent_reads_all_answer_right(tmp_path, log_url, keys, ray_local):
    async with serving(log_url) as api, ClientSession(
            api.base, headers={"Authorization": f"Bearer {keys['admin']}"},
            connector=TCPConnector(limit=POSTS + GETS)) as http:
        service = await create(http, orders_service(tmp_path, rows=200, pricing=PER_RECORD))

        posted = await asyncio.gather(*(answer(http, "POST", f"/services/{service}/requests",
                                               json={"customerId": "acme"}) for _ in range(POSTS)))
        assert [status for status, _ in posted] == [202] * POSTS, posted
        ids = [body["requestId"] for _, body in posted]
        assert len(set(ids)) == POSTS

        read = await asyncio.gather(*(answer(http, "GET", f"/requests/{ids[i % POSTS]}") for i in range(GETS)))
        wrong = [(i, status, body) for i, (status, body) in enumerate(read)
                 if status != 200 or body["requestId"] != ids[i % POSTS] or body["serviceId"] != service
                 or body["customerId"] != "acme" or body["status"] not in ("queued", "running", "success")]
        assert wrong == []
