"""Leadership of a fleet's masters: the numbered term one master holds at a time."""

from __future__ import annotations

from daybook.model.rules import MAX_TEXT_LEN, checked, record

# A master's address as minions and operators reach it: HOST[:PUBLISH_PORT].
MAX_ADDRESS_LEN = 300


@record
class Term:
    """One leadership: its number, which only grows across the fleet (Consul's LockIndex
    on the leader key, or the counter in the embedded lease), the master holding it (the
    address minions reach it at), when it began, and the backend's handle on it (the
    Consul session id; empty for the embedded lease) so a standby can depose a dead holder."""

    number: int = checked(minimum=1)
    holder: str = checked(max_len=MAX_ADDRESS_LEN)
    since: float
    session: str = checked(max_len=MAX_TEXT_LEN, default="")


def is_newer_term(candidate: int, seen: int) -> bool:
    """Fencing: act only on a term at least as new as the newest one seen."""
    return candidate >= seen


# A master's part in its fleet, as `daybook status` and the HTTP API show it.
LEADER, STANDBY, UNREACHABLE = "leader", "standby", "unreachable"
MASTER_ROLES = frozenset({LEADER, STANDBY, UNREACHABLE})


def is_master_role(text: str) -> bool:
    return text in MASTER_ROLES


@record
class MasterView:
    """One master as seen by whoever asked: its address (HOST:PUBLISH_PORT), its role, and
    the term it leads (a leader) or knows to be led (a standby); `since`: when that term
    began. An unreachable master has neither."""

    address: str = checked(max_len=MAX_ADDRESS_LEN)
    role: str = checked(is_master_role, max_len=16, problem="is not a master role")
    term: int | None = checked(minimum=0, default=None)
    since: float | None = None


def answered_view(
    address: str, leader: Term | None, *, standby: bool, leading: bool | None
) -> MasterView:
    """The master at `address` as its own answer shows it: a standby when it says it does
    not lead (`leading`) or refused as a standby, else the leader; the term it leads or
    knows to be led, and since when. A master that does not say (one from before replies
    carried `leading`) leads unless it refused as a standby.

    Never judged by comparing `address` with `leader.holder`: the address an operator
    reaches a master at (127.0.0.1, a load balancer's name) need not be the one it
    advertises, so a master leading alone would look like a standby."""
    return MasterView(
        address=address,
        role=STANDBY if standby or leading is False else LEADER,
        term=leader.number if leader is not None else None,
        since=leader.since if leader is not None else None,
    )


def unreachable_view(address: str) -> MasterView:
    return MasterView(address=address, role=UNREACHABLE)
