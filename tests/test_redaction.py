"""Every form a secret takes in a URL, a keyword string or a header is hidden by the
one redaction module; and a password with an unencoded '@' connects as typed."""
import pickle

import pytest

from etl_actors.db import normalize_url, redact
from etl_actors.redaction import (ConnectionUrl, redact_headers, redact_text, redact_url, remember, secrets_of)


@pytest.mark.parametrize("url, shown", [
    ("postgresql://etl:S3cr3tPw@db/etl", "postgresql://etl:***@db/etl"),
    ("postgresql://etl:Sup3r@S3cretPW@db/etl", "postgresql://etl:***@db/etl"),
    ("postgresql://etl:pa%40ss@db:5432/etl", "postgresql://etl:***@db:5432/etl"),
    ("postgresql://etl@db/etl?password=S3cr3t&sslmode=require", "postgresql://etl@db/etl?password=***&sslmode=require"),
    ("postgresql://etl@db/etl?sslpassword=K3y&passfile=/home/etl/.pgpass",
     "postgresql://etl@db/etl?sslpassword=***&passfile=***"),
    ("s3://bucket/in?access_key=AKIA1&secret_key=SK2&endpoint_override=minio:9000",
     "s3://bucket/in?access_key=***&secret_key=***&endpoint_override=minio:9000"),
    ("https://api.example.com/v1/orders?api_key=k1&page=2&token=t2", "https://api.example.com/v1/orders?api_key=***&page=2&token=***"),
    ("https://acct.blob.core.windows.net/c?sv=2024&sig=abc%2Bdef&sas=x", "https://acct.blob.core.windows.net/c?sv=2024&sig=***&sas=***"),
    ("https://host/api?email=ann@example.com", "https://host/api?email=ann@example.com"),
    ("sqlite:///data/events.db", "sqlite:///data/events.db"),
])
def test_redact_url_hides_the_password_and_secret_parameters_and_nothing_else(url, shown):
    assert redact_url(url) == shown


def test_a_password_with_an_unencoded_at_sign_is_read_whole():
    parsed = normalize_url("postgresql://etl:Sup3r@S3cretPW@db.internal:5432/etl")
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == \
        ("etl", "Sup3r@S3cretPW", "db.internal", "etl")
    assert redact("postgresql://etl:Sup3r@S3cretPW@db.internal/etl") == "postgresql+psycopg://etl:***@db.internal/etl"


def test_secrets_of_gives_each_secret_as_written_and_decoded():
    import base64

    basic = base64.b64encode(b"etl:pa@ss").decode()      # how an HTTP client sends the userinfo
    assert secrets_of("postgresql://etl:pa%40ss@db/etl?token=t%2Fok") == {"pa%40ss", "pa@ss", "t%2Fok", "t/ok", basic}


def test_a_url_written_without_its_scheme_still_hides_its_password():
    assert redact_url("hook:Pw4Secret@host/alerts") == "hook:***@host/alerts"
    assert "Pw4Secret" in secrets_of("hook:Pw4Secret@host/alerts")
    assert redact_url("someone@example.com") == "someone@example.com"


def test_redact_text_hides_urls_keyword_strings_and_header_lines_in_messages():
    text = ('connection to postgresql://etl:pw1234@db/etl failed; dsn "host=db password=hunter22 user=etl"; '
            'sent Authorization: Bearer eyJhbGciOi.x and X-API-Key: k-9911')
    shown = redact_text(text)
    for secret in ("pw1234", "hunter22", "eyJhbGciOi.x", "k-9911"):
        assert secret not in shown
    assert "postgresql://etl:***@db/etl" in shown and "Authorization: Bearer ***" in shown


def test_a_remembered_secret_is_hidden_wherever_it_appears():
    remember("Tail0fAPassw0rd")
    assert redact_text('could not resolve host "Tail0fAPassw0rd@db"') == 'could not resolve host "***@db"'


def test_words_that_merely_name_a_secret_are_left_alone():
    assert redact_text("column 'token' not found; mapping token: cannot convert 'abc' to int") == \
        "column 'token' not found; mapping token: cannot convert 'abc' to int"


def test_headers_that_carry_secrets_are_masked():
    assert redact_headers({"Authorization": "Bearer x", "X-API-Key": "k", "Accept": "application/json",
                           "X-Auth-Token": "t", "Cookie": "s=1"}) == \
        {"Authorization": "***", "X-API-Key": "***", "Accept": "application/json", "X-Auth-Token": "***",
         "Cookie": "***"}


def test_a_connection_url_is_a_plain_string_that_hides_itself_in_repr_and_survives_pickling():
    url = ConnectionUrl("postgresql://etl:Pickl3dPw@db/etl")
    assert url == "postgresql://etl:Pickl3dPw@db/etl" and "Pickl3dPw" not in repr(url)
    copy = pickle.loads(pickle.dumps(url))
    assert isinstance(copy, ConnectionUrl) and copy == url
