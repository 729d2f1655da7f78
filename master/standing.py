"""This master's standing in its fleet: whether it leads, under which term, and who leads
when it does not. The loop's parts share one `Standing`; only the loop thread changes it,
on what the elector posts (see master.election)."""

from __future__ import annotations

from daybook.model.leadership import LEADER, STANDBY, MasterView, Term


class Standing:
    """Leading (with `term`, None for a master outside leader election, whose events carry
    term 0) or standing by (with `leader`, the term it last saw held, if any)."""

    def __init__(self, address: str = "", term: Term | None = None, *, leading: bool = True):
        self.address = address
        self.leading = leading
        self.term = term if leading else None
        self.leader: Term | None = term
        self.changes = 0

    @classmethod
    def standby(cls, address: str, leader: Term | None = None) -> Standing:
        standing = cls(address, None, leading=False)
        standing.leader = leader
        return standing

    @property
    def number(self) -> int:
        """The term events carry: this master's own while it leads, else 0."""
        return self.term.number if self.leading and self.term is not None else 0

    def gain(self, term: Term) -> None:
        self.leading, self.term, self.leader = True, term, term
        self.changes += 1

    def lose(self) -> None:
        if self.leading:
            self.changes += 1
        self.leading, self.term = False, None
        # Until the elector sees the next holder, nobody is known to lead.
        self.leader = None

    def see(self, leader: Term | None) -> None:
        """A standby learnt who leads now (None: nobody holds the lock)."""
        if not self.leading:
            self.leader = leader

    def masters(self) -> tuple[MasterView, ...]:
        """The masters this one knows: itself, and the leader when it is another."""
        leader = self.leader
        if not self.address and leader is None:
            return ()  # outside leader election: nothing to say
        if self.leading:
            own = self.term
            number = own.number if own else None
            return (MasterView(self.address, LEADER, number, own.since if own else None),)
        if leader is None:
            return (MasterView(self.address, STANDBY),)
        me = MasterView(self.address, STANDBY, leader.number, leader.since)
        if leader.holder == self.address:
            return (me,)
        return (me, MasterView(leader.holder, LEADER, leader.number, leader.since))

    def standby_error(self) -> str:
        leader = self.leader
        if leader is None:
            return "this master is a standby and no master leads right now; try again shortly"
        return f"this master is a standby; the leader is {leader.holder} (term {leader.number})"
