"""Access to the master's control socket: who may ask for what, and the answers to `hello`
and to key management.

The transport vouches for each request's sender (`Peer`): the master's local socket, a CURVE
key, or nobody. The rules, checked for every request (a CURVE session is authenticated once,
when it starts; a key's standing may change during it):

- `hello`: any CURVE key; the answer is that key's standing, and an unknown key is recorded
  (pending) with the host it claims.
- `sync`, `sync_result`, `status`: the local socket, or an accepted operator key.
- `keys.*`: the local socket only.
- `downloads`: an accepted minion key, for the host bound to it (any host asked for in the
  insecure opt-out, which authenticates nobody).
- anything else does not get past the wire's allow-list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from daybook.model.keys import ACCEPTED, MINION, OPERATOR
from daybook.model.messages import (
    KEY_OPS,
    OP_DOWNLOADS,
    OP_HELLO,
    OP_KEYS_ACCEPT,
    OP_KEYS_DELETE,
    OP_KEYS_LIST,
    OP_KEYS_REJECT,
    OPERATOR_OPS,
    ControlReply,
    ControlRequest,
)
from daybook.net.transport import Peer
from master.keyring import KeyRing, KeySelectionError

log = logging.getLogger(__name__)

# Handled by `Access.answer` rather than by the master's sync and status logic.
ACCESS_OPS = KEY_OPS | {OP_HELLO}


@dataclass(frozen=True)
class Answer:
    """The reply to send; and whether a minion lost its standing (it must be cut off at
    once), with the host bound to its key, if any."""

    reply: ControlReply
    cut_off: bool = False
    host: str | None = None


class Access:
    def __init__(self, keyring: KeyRing | None) -> None:
        self.keyring = keyring
        self.refused = 0

    def refusal(self, request: ControlRequest, peer: Peer) -> str | None:
        """Why `peer` may not make `request`; None when it may."""
        reason = self._refusal(request, peer)
        if reason is not None:
            self.refused += 1
            log.info(
                "refused %s from %s: %s", request.op, peer.address or "the local socket", reason
            )
        return reason

    def _refusal(self, request: ControlRequest, peer: Peer) -> str | None:
        if request.op == OP_HELLO:
            if peer.public_key is None or self.keyring is None:
                return "hello is for CURVE clients"
            return None
        if request.op in KEY_OPS:
            if peer.local:
                return None
            return (
                "keys are managed only on the master's local socket: run `daybook keys` on "
                "the master's host, as the master's user"
            )
        if request.op == OP_DOWNLOADS:
            return None if self.minion_host(request, peer) else "downloads are for accepted minions"
        if request.op in OPERATOR_OPS:
            if peer.local:
                return None
            if self.keyring is not None and self.keyring.is_operator(peer.public_key):
                return None
            return self._not_an_operator(request, peer)
        return f"operation {request.op} is refused"

    def minion_host(self, request: ControlRequest, peer: Peer) -> str | None:
        """The host an accepted minion's key is bound to; None for any other peer."""
        if self.keyring is None:
            return request.host  # the insecure opt-out: nobody is authenticated
        if peer.public_key is None:
            return None
        entry = self.keyring.get(peer.public_key)
        if entry is None or entry.role != MINION or entry.state != ACCEPTED:
            return None
        return entry.host

    def _not_an_operator(self, request: ControlRequest, peer: Peer) -> str:
        if self.keyring is None or peer.public_key is None:
            return (
                "operator commands need the master's local socket or an accepted operator key "
                "over CURVE"
            )
        entry = self.keyring.get(peer.public_key)
        if entry is None and request.host is not None:
            entry = self.keyring.hello(peer.public_key, request.host, OPERATOR, peer.address)
        if entry is None:
            return "this key is not an accepted operator key"
        if entry.role != OPERATOR:
            return f"this is a {entry.role} key, and a {entry.role} may not make operator requests"
        return (
            f"the operator key {entry.fingerprint} is {entry.state}, not accepted; on the master, "
            f"`daybook keys accept {entry.fingerprint}` accepts it"
        )

    def answer(self, request: ControlRequest, peer: Peer) -> Answer:
        """Answer an allowed `hello` or `keys.*` request."""
        if request.op == OP_HELLO:
            return Answer(self._hello(request, peer))
        keyring = self.keyring
        if keyring is None:
            return Answer(
                ControlReply(
                    request.request_id,
                    error="this master runs with insecure_transport: there are no keys",
                )
            )
        if request.op == OP_KEYS_LIST:
            return Answer(ControlReply(request.request_id, keys=keyring.listing()))
        assert request.selector is not None
        change = {
            OP_KEYS_ACCEPT: keyring.accept,
            OP_KEYS_REJECT: keyring.reject,
            OP_KEYS_DELETE: keyring.delete,
        }[request.op]
        try:
            result = change(request.selector)
        except KeySelectionError as exc:
            return Answer(ControlReply(request.request_id, error=str(exc), invalid=True))
        return Answer(
            ControlReply(request.request_id, key=result.entry),
            cut_off=result.cut_off,
            host=result.entry.host,
        )

    def _hello(self, request: ControlRequest, peer: Peer) -> ControlReply:
        # `refusal` and the wire's checks let no other hello through.
        assert self.keyring is not None
        assert peer.public_key is not None
        assert request.host is not None
        assert request.role is not None
        entry = self.keyring.hello(peer.public_key, request.host, request.role, peer.address)
        if entry is None:
            return ControlReply(request.request_id, error="too many keys are pending; try later")
        return ControlReply(request.request_id, key=entry)
