"""Signed downloads end to end: a real master on S3 (moto) signs the URLs its minions, with no
AWS configuration at all, download through; what it refuses, and what a minion refuses."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from archives import make_asset
from process_fleet import ProcessFleet

from daybook.errors import FleetError
from daybook.net.client import ControlClient
from daybook.net.endpoints import read_endpoints
from daybook.net.keys import MASTER_KEY, MINION_KEY, keys_dir, load_or_create_keypair
from daybook.net.transport import ClientCredentials
from daybook.registry.file import FileRegistry
from daybook.store.s3 import S3Store
from daybook_testing.waiting import wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.e2e

PREFIX = "daybook"


@pytest.fixture
def fleet(s3_env: str, s3_bucket: str, tmp_path: Path) -> Iterator[ProcessFleet]:
    store = S3Store(s3_bucket, PREFIX)
    running = ProcessFleet(tmp_path, store=store, registry=FileRegistry(tmp_path / "mappings.json"))
    try:
        yield running
    finally:
        failures = running.close()
        store.close()
        assert not failures, "\n".join(failures)


def minion_client(fleet: ProcessFleet, host: str) -> ControlClient:
    """A control client holding `host`'s own minion key, as its install child does."""
    master_key, _ = load_or_create_keypair(keys_dir(fleet.master_dir), MASTER_KEY)
    keypair, _ = load_or_create_keypair(keys_dir(fleet.root / host), MINION_KEY)
    port = read_endpoints(fleet.master_dir).ports["control"]
    return ControlClient(
        f"tcp://127.0.0.1:{port}",
        credentials=ClientCredentials(keypair, master_key.public),
        host=host,
    )


def metric(fleet: ProcessFleet, name: str, labels: str) -> float:
    port = read_endpoints(fleet.master_dir).ports["http"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_a_minion_with_no_aws_configuration_installs_from_s3(fleet: ProcessFleet) -> None:
    fleet.push("web", "1.0")
    fleet.push("web", "1.1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1", without=("AWS_",))
    fleet.wait_converged(["web-1"], {"web": ["1.0", "1.1"]})
    run = fleet.install_dir("web-1") / "web" / "1.1" / "bin" / "run"
    assert run.read_text() == "#!/bin/sh\necho web 1.1\n"


def test_the_master_signs_only_the_services_of_the_asking_host(fleet: ProcessFleet) -> None:
    fleet.push("web", "1")
    fleet.push("db", "7")
    fleet.map("web-*", "web")
    fleet.map("db-*", "db")
    fleet.start_master()
    fleet.start_minion("web-1", without=("AWS_",))
    fleet.wait_converged(["web-1"], {"web": ["1"]})
    with minion_client(fleet, "web-1") as client:
        (signed,) = client.downloads("web", ("1",))
        assert signed.url is not None
        assert signed.sha256 is not None
        assert signed.size > 0
        # Another host's service: refused, logged and counted, whatever the versions.
        with pytest.raises(FleetError, match="db is not mapped to web-1"):
            client.downloads("db", ("7",))
        with pytest.raises(FleetError, match="db is not mapped to web-1"):
            client.downloads("db")
    wait_for(
        lambda: metric(fleet, "daybook_refused_downloads_total", 'host="web-1"') == 2,
        "two refusals counted",
    )
    assert "refused download URLs to web-1: db is not mapped to web-1" in fleet.master.log()


def test_a_version_whose_bytes_were_replaced_is_refused(
    fleet: ProcessFleet, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    # Someone with write access to the bucket swaps the archive, keeping its metadata.
    key = f"{PREFIX}/web-1.tar.gz"
    metadata = s3_client.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
    (tmp_path / "forged").mkdir()
    forged = make_asset(tmp_path / "forged", "web", "1", {"bin/run": b"#!/bin/sh\nevil\n"})
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=forged.read_bytes(), Metadata=metadata)
    fleet.start_minion("web-1", without=("AWS_",))

    def refused() -> bool:
        report = fleet.last_report("web-1")
        return report is not None and "1" in report.services["web"].failed

    wait_for(refused, "web-1 reporting web 1 failed")
    report = fleet.last_report("web-1")
    assert report is not None
    assert "SHA-256" in report.services["web"].failed["1"]
    assert fleet.installed("web-1", "web") == []
