"""Pytest fixtures for S3: a moto server speaking real HTTP on loopback, its env, and buckets.

SeaweedFS, the real S3 server of the suite, has its fixtures in seaweed_server.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.exceptions import ClientError

from daybook_testing.s3 import aws_env, serve_moto

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"
TEST_REGION = "us-east-1"

# Variables that would let a developer's own AWS setup leak into the tests.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on 127.0.0.1; yields its endpoint URL, e.g. `http://127.0.0.1:41237`."""
    with serve_moto() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point the AWS chain at the moto server with test credentials; returns the endpoint."""
    return point_aws_at(moto_server, monkeypatch, tmp_path)


def point_aws_at(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """The AWS chain of this test: `endpoint`, the test credentials, nothing of the
    developer's own setup. Returns the endpoint."""
    for name in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    env = aws_env(
        endpoint,
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        region=TEST_REGION,
        scratch=tmp_path,
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return endpoint


@pytest.fixture
def s3_client(moto_server: str) -> Iterator[S3Client]:
    """A client for setting up and inspecting buckets, configured explicitly, not from env."""
    client = client_for(moto_server)
    try:
        yield client
    finally:
        client.close()


def client_for(endpoint: str) -> S3Client:
    """An S3 client for `endpoint` with the test credentials, whatever the environment says."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=TEST_REGION,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
    )


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> Iterator[str]:
    """A fresh, uniquely named bucket on the moto server; emptied and deleted afterwards."""
    name = f"daybook-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    delete_bucket(s3_client, name)


def delete_bucket(client: S3Client, name: str) -> None:
    """Abort uploads, delete every object, then the bucket; a missing bucket is fine."""
    try:
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": obj["Key"]} for obj in page.get("Contents", [])
            ]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
