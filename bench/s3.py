"""A moto S3 server on loopback for the bench, and the environment that points clients at it."""

from __future__ import annotations

import functools
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daybook_testing.s3 import aws_env, serve_moto

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ACCESS_KEY = "bench"
SECRET_KEY = "bench"  # noqa: S105 - moto takes any credentials
REGION = "us-east-1"


class RequestCounter:
    """Requests the server received, by the access key id that signed them."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, access_key: str) -> None:
        with self._lock:
            self._counts[access_key] += 1

    def count(self, access_key: str) -> int:
        with self._lock:
            return self._counts[access_key]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    # Environment for child processes: the AWS chain pointed at this server, nothing else.
    env: dict[str, str]
    requests: RequestCounter


_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/")
# Presigned URLs carry the key in the query: SigV4 `X-Amz-Credential`, or SigV2 style.
_QUERY_CREDENTIAL_RE = re.compile(r"(?:X-Amz-Credential=([^%/&]+)(?:%2F|/)|AWSAccessKeyId=([^&]+))")


def _counting(app: Any, counter: RequestCounter) -> Any:
    """Wrap a WSGI app to count each request under the access key that signed it."""

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        header = environ.get("HTTP_AUTHORIZATION", "")
        match = _CREDENTIAL_RE.search(header) or _QUERY_CREDENTIAL_RE.search(
            environ.get("QUERY_STRING", "")
        )
        counter.add(next((group for group in match.groups() if group), "") if match else "")
        return app(environ, start_response)

    return counted


@contextmanager
def moto_server(workdir: Path) -> Iterator[S3Server]:
    """A moto server on 127.0.0.1 that counts the requests it serves by access key id, so
    clients given their own keys are counted apart."""
    counter = RequestCounter()
    with serve_moto(wrap_app=functools.partial(_counting, counter=counter)) as endpoint:
        yield S3Server(endpoint, client_env(endpoint, workdir), counter)


def client_env(endpoint: str, workdir: Path) -> dict[str, str]:
    """This environment without its AWS and daybook settings, pointed at `endpoint`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "DAYBOOK_")) and name not in ("BOTO_CONFIG",)
    }
    env.update(
        aws_env(
            endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scratch=workdir
        )
    )
    return env


def create_bucket(server: S3Server, bucket: str) -> None:
    client = _client(server)
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


def presigned_url(server: S3Server, bucket: str, key: str, expires_s: int = 6 * 3600) -> str:
    """A GET URL for a private object, signed as a plain `curl` user would be given one."""
    client = _client(server)
    try:
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )
    finally:
        client.close()


def _client(server: S3Server) -> S3Client:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
