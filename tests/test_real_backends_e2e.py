"""End to end on production-shaped backends: `daybook push`, `map` and `pull` as separate
processes, against S3 (moto, and SeaweedFS as a real server) and a Consul agent over TLS
with ACLs, configured the way the README tells operators to."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from archives import make_asset
from process_fleet import run_daybook

from daybook_testing.consul_server import ConsulPKI, ConsulServer

pytestmark = pytest.mark.e2e

TOKEN = "5e3c1d2a-0000-4000-8000-00000000beef"


@pytest.fixture(params=["moto", "seaweed"])
def s3_bucket_url(request: pytest.FixtureRequest) -> str:
    server = "s3" if request.param == "moto" else "seaweed"
    request.getfixturevalue(f"{server}_env")
    return f"s3://{request.getfixturevalue(f'{server}_bucket')}/daybook"


@pytest.fixture
def tls_acl_consul(consul_pki: ConsulPKI) -> ConsulServer:
    server = ConsulServer(tls=consul_pki.server)
    server.enable_acls("deny")
    # The operator's policy of the README: key_prefix "daybook/hosts/" { policy = "write" }.
    server.add_acl_token(TOKEN, key_prefix={"daybook/hosts/": "write"})
    return server


def test_push_map_pull_on_s3_and_consul_over_tls_with_a_token(
    s3_bucket_url: str,
    tls_acl_consul: ConsulServer,
    consul_pki: ConsulPKI,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "consul-token"
    token_file.write_text(TOKEN + "\n")  # as a mounted secret: with its newline
    token_file.chmod(0o600)
    with tls_acl_consul as consul:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAYBOOK_", "CONSUL_"))}
        env |= {
            "DAYBOOK_STORE": s3_bucket_url,
            "DAYBOOK_REGISTRY": f"consul://{consul.address}/daybook/hosts/?wait=20s",
            "DAYBOOK_DATA_DIR": str(tmp_path / "data"),
            "CONSUL_CACERT": consul_pki.ca_file,
            "CONSUL_HTTP_TOKEN_FILE": str(token_file),
        }

        def daybook(*args: str) -> subprocess.CompletedProcess[str]:
            return run_daybook(*args, env=env)

        asset = make_asset(tmp_path, "api", "1.4.0")
        for args in (("push", str(asset)), ("map", "set", "web-*", "api")):
            done = daybook(*args)
            assert done.returncode == 0, done.stderr
        install_dir = tmp_path / "install"
        pulled = daybook("pull", "--host", "web-1", "--install-dir", str(install_dir), "--json")
        assert pulled.returncode == 0, pulled.stderr
        assert json.loads(pulled.stdout)["services"]["api"]["installed"] == ["1.4.0"]
        run = install_dir / "api" / "1.4.0" / "bin" / "run"
        assert run.read_text() == "#!/bin/sh\necho api 1.4.0\n"
        # Everything went over TLS with the token, which no output shows.
        assert all(r.header("X-Consul-Token") == TOKEN for r in consul.request_log)
        assert TOKEN not in pulled.stdout + pulled.stderr
