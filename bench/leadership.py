"""`python -m bench.leadership`: failover times and a standby's Consul requests, measured
on the tests' Consul double with the default session TTL and lock-delay (real clock), and
on the file lease. Prints figures; asserts nothing.

* kill: a child process holds the lock and renews it every TTL/2, as a leader would, and is
  SIGKILLed; a standby in this process waits (polling `acquire` every `--poll` seconds, or
  holding `watch` and trying when the key frees) until it takes over. On Consul the
  session then dies of its TTL (Consul's timer: 2 x TTL after the last renew) and the
  lock-delay runs; "kill+depose" is the same with the standby deposing the dead holder's
  session as soon as it is killed (what a standby that saw heartbeats stop would do).
* release: the holder calls `release()`; the standby is waiting as above.
* at rest: Consul requests a minute of a standby while the leader lives, counted by the
  double, for polling and for a held `watch`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daybook.model.leadership import Term
from daybook.registry.base import Leadership, open_leadership
from daybook.registry.consul import ConsulRegistry
from daybook.registry.consul_leadership import ConsulLeadership
from daybook_testing.consul_server import ConsulServer

HOLDER = """
import sys, threading
from daybook.registry.base import open_leadership
lead = open_leadership(sys.argv[1])
term = lead.acquire("holder:4505")
print(term.number, flush=True)
period = lead.ttl_s / 2 if lead.ttl_s != float("inf") else 1.0
done = threading.Event()
def keep():
    while not done.wait(period) and lead.renew():
        pass
threading.Thread(target=keep, daemon=True).start()
if sys.argv[2] == "release":
    sys.stdin.readline()
    done.set()
    lead.release()
    print("released", flush=True)
threading.Event().wait()
"""
WATCH_TIMEOUT_S = 60.0
LOCK_DELAY_RETRY_S = 0.1
# Tells the standby's requests apart in the double's log (ACLs are off: not a secret).
TOKEN = "bench-standby"  # noqa: S105


def start_holder(url: str, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the term: it leads now
    return proc


def stop_holder(holder: subprocess.Popen[str]) -> None:
    """Let it release the lock (so the next measurement starts free), then kill it."""
    if holder.poll() is None and holder.stdin is not None:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout is not None
        holder.stdout.readline()
    holder.kill()
    holder.wait()


def take_over(standby: Leadership, strategy: str, poll_s: float) -> Term:
    """Wait as a standby should until `acquire` succeeds. Watching: block on the lock while
    it is held, but never while it is free: a free key refusing the acquire is in its
    lock-delay and changes no more, so a blocking query would sit out its whole wait."""
    index = 0
    while (term := standby.acquire("standby:4505")) is None:
        if strategy == "poll":
            time.sleep(poll_s)
            continue
        index, seen = standby.watch(index, WATCH_TIMEOUT_S)
        if seen is None:
            time.sleep(LOCK_DELAY_RETRY_S)
            index = 0  # look again at once next time
    return term


def failover_s(url: str, case: str, strategy: str, poll_s: float) -> float:
    holder = start_holder(url, "release" if case == "release" else "hold")
    standby = open_leadership(url)
    try:
        dead = standby.leader()
        time.sleep(1.0)  # a moment into the term, between two renews
        started = time.monotonic()
        if case == "release":
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
        else:
            holder.send_signal(signal.SIGKILL)
            if case == "kill+depose" and dead is not None:
                standby.depose(dead)
        take_over(standby, strategy, poll_s)
        return time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
        standby.release()
        standby.close()


def requests_per_minute(
    server: ConsulServer, url: str, strategy: str, poll_s: float, window_s: float
) -> float:
    """The standby's own requests (told apart by its token, which the double logs even
    with ACLs off) over `window_s` of rest, after its first read, per minute."""
    holder = start_holder(url, "release")
    standby = ConsulLeadership(ConsulRegistry(server.address, "daybook/hosts/", token=TOKEN))
    try:
        index, _ = standby.watch(0, 1.0)
        server.clear_request_log()
        deadline = time.monotonic() + window_s
        while (remaining := deadline - time.monotonic()) > 0:
            if strategy == "watch":
                index, _ = standby.watch(index, WATCH_TIMEOUT_S)
            else:
                standby.acquire("standby:4505")
                time.sleep(min(poll_s, remaining))
        mine = [r for r in server.request_log if r.header("X-Consul-Token") == TOKEN]
        return len(mine) * 60.0 / window_s
    finally:
        stop_holder(holder)
        holder.wait()
        standby.close()


def report(name: str, value: float, unit: str) -> None:
    print(f"{name:<62} {value:8.2f} {unit}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", help="failover, rest (default: both)")
    parser.add_argument("--poll", type=float, default=1.0, help="a polling standby's period")
    parser.add_argument(
        "--rest-window", type=float, default=125.0, help="seconds a standby at rest is counted"
    )
    args = parser.parse_args()
    poll_s: float = args.poll
    with ConsulServer() as server, tempfile.TemporaryDirectory() as tmp:
        consul = f"consul://{server.address}/daybook/hosts/"
        lease = f"file://{Path(tmp) / 'mappings.json'}"
        parts = args.parts or ["failover", "rest"]
        if unknown := set(parts) - {"failover", "rest"}:
            parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
        if "failover" in parts:
            failovers(consul, lease, poll_s)
        if "rest" not in parts:
            return
        for strategy in ("poll", "watch"):
            rate = requests_per_minute(server, consul, strategy, poll_s, args.rest_window)
            report(f"consul requests a minute, standby at rest ({strategy})", rate, "/min")


def failovers(consul: str, lease: str, poll_s: float) -> None:
    for url, name, cases in (
        (consul, "consul", ("release", "kill+depose", "kill")),
        (lease, "file lease", ("release", "kill")),
    ):
        for case in cases:
            for strategy in ("watch", "poll"):
                label = f"{name} {case}, standby {strategy} (poll {poll_s:g} s)"
                report(label, failover_s(url, case, strategy, poll_s), "s")


if __name__ == "__main__":
    main()
