"""API keys: printed once, stored as a hash, listed without secrets, revoked by prefix,
and a revoked key refused by a running server within a second."""
import asyncio

import pytest

from etl_actors.cli import main
from etl_actors.eventlog import EventLog
from etl_actors.service.keys import digest, list_keys

from .conftest import log_bytes, serving


def keys_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["keys", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(tmp_path, log_url, capsys):
    code, out, err = keys_cli(capsys, "create", "--customer", "acme", "--log", log_url)
    key = out.splitlines()[-1]
    assert code == 0 and key.startswith("eak_") and key == out.strip()
    assert "shown this once" in err and key not in err
    stored = log_bytes(tmp_path)
    assert key.encode() not in stored and key[15:].encode() not in stored
    assert digest(key).encode() in stored
    assert [(k["role"], k["customerId"], k["revokedAt"]) for k in list_keys(EventLog(log_url))] == \
        [("customer", "acme", None)]


def test_list_shows_prefix_role_customer_and_dates_never_a_secret(log_url, capsys):
    _, out, _ = keys_cli(capsys, "create", "--admin", "--log", log_url)
    admin = out.strip()
    _, out, _ = keys_cli(capsys, "create", "--customer", "acme", "--log", log_url)
    customer = out.strip()
    code, listing, _ = keys_cli(capsys, "list", "--log", log_url)
    assert code == 0
    lines = listing.splitlines()
    assert lines[0].split() == ["PREFIX", "ROLE", "CUSTOMER", "CREATED", "REVOKED"]
    assert {tuple(line.split()[:3]) for line in lines[1:]} == {(admin[:14], "admin", "-"),
                                                               (customer[:14], "customer", "acme")}
    for key in (admin, customer):
        assert key[15:] not in listing and digest(key) not in listing


def test_revoke_needs_a_unique_prefix(log_url, capsys):
    log = EventLog(log_url)
    for _ in range(2):
        keys_cli(capsys, "create", "--admin", "--log", log_url)
    made = [k["keyId"] for k in list_keys(log)]
    assert keys_cli(capsys, "revoke", "zzzzzzzzzzzz", "--log", log_url)[0] == 2
    assert keys_cli(capsys, "revoke", "", "--log", log_url)[0] == 2
    code, _, err = keys_cli(capsys, "revoke", made[0][:6], "--log", log_url)
    assert code == 0 and made[0] in err
    assert [k["keyId"] for k in list_keys(log) if k["revokedAt"]] == [made[0]]


@pytest.mark.asyncio
async def test_a_key_revoked_from_the_command_line_is_refused_within_a_second(log_url, keys, capsys):
    async with serving(log_url, runtime="local") as api:
        acme = api.as_(keys["acme"])
        async with acme.get("/requests") as response:
            assert response.status == 200
        assert keys_cli(capsys, "revoke", keys["acme"][:12], "--log", log_url)[0] == 0
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        while True:
            async with acme.get("/requests") as response:
                if response.status == 401:
                    assert "error" in await response.json()
                    break
            assert loop.time() - revoked_at < 1.0, "the revoked key still worked after 1 s"
            await asyncio.sleep(0.05)
        async with api.as_(keys["globex"]).get("/requests") as response:
            assert response.status == 200
