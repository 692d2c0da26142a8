"""The S3-compatible store of the batch tests: one moto server (a subprocess speaking
HTTP on 127.0.0.1) for the session; tests keep apart by bucket names of their own."""
import pytest

from s3server import MotoServer


@pytest.fixture(scope="session")
def s3():
    with MotoServer() as server:
        yield server
