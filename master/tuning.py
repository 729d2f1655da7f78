"""The master loop's timing knobs, shared by the parts it dispatches to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MasterTuning:
    """Timing knobs of the loop; the settings provide the first, the rest rarely change."""

    republish_interval_s: float = 30.0
    # The minions' own heartbeat interval, and at most how many heartbeats a second the
    # fleet may send in all: a larger fleet is asked to heartbeat less often (0: never).
    heartbeat_interval_s: float = 5.0
    max_heartbeats_per_s: float = 500.0
    # An automatic sync stops waiting for answers this long after it was issued: a little
    # over a republish, which gives every live minion a second chance to hear of it.
    sync_deadline_s: float = 40.0
    # How long the download URLs signed for minions stay valid.
    download_url_expiry_s: float = 300.0
    # Hosts that may start downloading each second: an event's spread is hosts / rate.
    download_starts_per_s: float = 100.0
    # How often open syncs are checked for hosts that went down (deadlines are met exactly),
    # and the database for open syncs nobody holds any more.
    close_check_interval_s: float = 1.0
    forgotten_sweep_interval_s: float = 30.0
    # Changes arriving this close together make one sync.
    coalesce_s: float = 0.05
    # At start, wait this long for both watchers before publishing a state built from one.
    startup_grace_s: float = 3.0
    # A minion that shows up behind gets a republish this soon, but never more often.
    catch_up_delay_s: float = 0.05
    min_republish_gap_s: float = 0.5
    # A catch-up goes to every subscriber, encrypted and sent once for each by the I/O
    # thread at about 4 us a KB (measured with 2,000). While a large fleet starts, they go
    # no closer together than this many bytes a second allow, about a tenth of that thread:
    # with 8,900 minions and a 9.5 KB state one every 3.4 s instead of every 0.5 s.
    catch_up_bytes_per_s: float = 25_000_000
    # Unfinished syncs younger than this are republished, at most this many at once.
    unfinished_window_s: float = 600.0
    max_republished_syncs: int = 8
    batch_limit: int = 5000
    host_flush_interval_s: float = 1.0
    keep_syncs: int = 10_000
    prune_interval_s: float = 3600.0
    # Memory a burst left free in the C heap goes back to the OS this often (a few ms of
    # the loop's time with 10,000 minions; see master.heap).
    heap_trim_interval_s: float = 30.0
    # An operator sync first has the polling watchers read their sources once more, so
    # `map set ...; sync` syncs the new mapping; but it waits for them no longer than this.
    refresh_timeout_s: float = 2.0
    # The snapshot the HTTP API reads is published this soon after a change, but never
    # more often, nor taking more than a tenth of the loop's time in a large fleet.
    view_interval_s: float = 0.2
    # Heartbeats that only move a host's last-seen time refresh the snapshot this seldom
    # (and at least four times within down_after_s): readers judge liveness at their own
    # clock, so copying a large fleet on every batch of heartbeats would buy nothing.
    heartbeat_view_interval_s: float = 2.0
    # After subscribers are dropped (a key deleted), the state is sent again this soon,
    # once the minions still accepted have reconnected.
    resubscribe_grace_s: float = 0.5
    # With nobody waiting on a sync and no new sync published for `busy_window_s`, the
    # results socket is read at most every `quiet_collect_interval_s` while it brings only
    # heartbeats, and every `report_collect_interval_s` once a read found a report: a
    # fleet's heartbeats, sent one by one at their own times, then wake the loop once a
    # second in a batch instead of once each, and reports arriving unasked (a republish's
    # answers, a stream of them) are still read twice a second. Answers an operator waits
    # for are read as they come, and a backlog (a read that stopped at `batch_limit`) is
    # read on at once. Reading reports once a second too cost ingest a third: 10,000
    # reports a second against 13,500-15,000 at 0.5 s. (Neither over down_after_s / 10.)
    quiet_collect_interval_s: float = 1.0
    report_collect_interval_s: float = 0.5
    busy_window_s: float = 5.0
