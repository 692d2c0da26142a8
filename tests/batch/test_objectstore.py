"""Connections to S3-compatible stores, the locations sources and sinks hold, and
which store errors a retry can mend: pure, no store needed."""
from __future__ import annotations

import pytest

from etl_actors import objectstore
from etl_actors.errors import SpecError
from etl_actors.redaction import redact_text, redact_url

KEY, SECRET = "AKIAUNIT1KEY", "Unit/Secret+Key@2"


@pytest.mark.parametrize("connection, expected", [
    ("s3://AKIAUNIT1KEY:Unit%2FSecret%2BKey%402@127.0.0.1:9000?scheme=http&region=us-east-1",
     "s3://raw-data/daily-exports?access_key=AKIAUNIT1KEY&secret_key=Unit%2FSecret%2BKey%402"
     "&endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1"),
    ("http://AKIAUNIT1KEY:Unit%2FSecret%2BKey%402@minio:9000",
     "s3://raw-data/daily-exports?access_key=AKIAUNIT1KEY&secret_key=Unit%2FSecret%2BKey%402"
     "&endpoint_override=minio:9000&scheme=http"),
    ("s3://?region=eu-west-1&max_attempts=2", "s3://raw-data/daily-exports?region=eu-west-1&max_attempts=2"),
])
def test_a_connection_folds_into_the_location_of_a_bucket_and_prefix(connection, expected):
    assert objectstore.location("raw-data", "daily-exports/", connection) == expected


def test_a_location_opens_with_its_credentials_endpoint_and_retries():
    where = objectstore.location("raw-data", "daily-exports", f"s3://{KEY}:Unit%2FSecret%2BKey%402@127.0.0.1:9"
                                                             "?scheme=http&region=eu-west-1&max_attempts=1")
    fs, path = objectstore.filesystem(where)
    options = fs.__reduce__()[1][0]
    assert path == "raw-data/daily-exports"
    assert (options["access_key"], options["secret_key"], options["endpoint_override"], options["scheme"],
            options["region"]) == (KEY, SECRET, "127.0.0.1:9", "http", "eu-west-1")


def test_the_secret_and_the_key_never_show_in_a_location():
    where = objectstore.location("raw-data", "in", f"s3://{KEY}:Unit%2FSecret%2BKey%402@127.0.0.1:9?scheme=http")
    shown = redact_url(where) + repr(where) + redact_text(f"cannot read {where}: failed")
    assert KEY not in shown and "Unit" not in shown
    assert redact_url(where) == "s3://raw-data/in?access_key=***&secret_key=***&endpoint_override=127.0.0.1:9" \
                                "&scheme=http"


@pytest.mark.parametrize("connection, message", [
    ("postgresql://u:p@db/x", "expected an S3 connection"),
    ("s3://k:s@127.0.0.1:9/bucket", r"names the store \(host:port\), not a bucket"),
    ("s3://k:s@127.0.0.1:9?colour=blue", "unknown option 'colour'"),
])
def test_a_connection_that_is_not_a_store_is_refused_without_its_secret(connection, message):
    with pytest.raises(ValueError, match=message) as refused:
        objectstore.location("b", "p", connection)
    assert ":s@" not in str(refused.value) and "u:p" not in str(refused.value)


def test_a_location_option_is_checked_before_anything_runs():
    with pytest.raises(SpecError, match=r"^batch.source.path: max_attempts: expected a positive number, got '0'"):
        objectstore.check_location("s3://b/p?max_attempts=0", "batch.source.path")
    with pytest.raises(SpecError, match="needs a bucket"):
        objectstore.check_location("s3://", "batch.source.path")


@pytest.mark.parametrize("message, transient", [
    ("When reading information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION during HeadObject "
     "operation: curlCode: 7, Could not connect to server", True),
    ("When reading 'b/x': AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.", True),
    ("When listing objects under key '' in bucket 'b': AWS Error UNKNOWN (HTTP status 503) during ListObjectsV2", True),
    ("AWS Error UNKNOWN (HTTP status 500) during GetObject operation", True),
    ("AWS Error UNKNOWN (HTTP status 429) during GetObject operation", True),
    ("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject operation", False),
    ("AWS Error INVALID_ACCESS_KEY_ID during GetObject operation: The AWS Access Key Id does not exist", False),
    ("AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist", False),
    ("AWS Error UNKNOWN (HTTP status 400) during CreateBucket operation: InvalidBucketName", False),
    ("AWS Error UNKNOWN (HTTP status 403) during GetObject operation", False),
    ("Connection reset by peer", True),
])
def test_store_errors_are_transient_only_when_a_retry_may_mend_them(message, transient):
    assert objectstore.is_transient(OSError(message)) is transient


def test_a_missing_key_or_a_refused_permission_is_terminal():
    assert not objectstore.is_transient(FileNotFoundError(2, "Path does not exist 'b/x'"))
    assert not objectstore.is_transient(PermissionError(13, "denied"))


def test_a_missing_bucket_is_terminal():
    assert not objectstore.is_transient(OSError("Bucket 'processed-data' not found. To create buckets, enable the "
                                                "allow_bucket_creation option."))
