"""The peer's tunnel policy list as one session knows it (the handshake signs only its digest).

After the handshake each side knows both digests. Equal digests mean equal lists (SHA-384): the
view starts complete and nothing is sent. Otherwise both sides send their whole list in
PolicyUpdate records right after the handshake, before any rekey message, and each side enables
a tunnel only once the peer's list is complete and matches the signed digest: no tunnel is
usable before both lists are known and reconciled. A live reload sends the difference as another
PolicyUpdate; its final chunk carries the sender's new count and digest, which the receiver
checks against its updated view, so the two views can never drift apart unnoticed.
"""

from __future__ import annotations

from gateway.protocol.constants import MAX_TUNNELS_PER_PEER
from gateway.protocol.errors import AuthError, WireError
from gateway.protocol.inner import PolicyUpdate
from gateway.protocol.policy import TunnelPolicy, policy_digest

__all__ = ["PolicyView"]


class PolicyView:
    """The remote list of one session: complete or still arriving, plus staged chunks."""

    __slots__ = ("_signed", "_staged", "complete", "policies")

    def __init__(self, remote_count: int, remote_digest: bytes,
                 local: dict[str, TunnelPolicy], local_digest: bytes) -> None:
        self._signed: tuple[int, bytes] | None = None
        self._staged: dict[str, TunnelPolicy | None] = {}
        if remote_digest == local_digest and remote_count == len(local):
            self.policies, self.complete = dict(local), True
        else:
            self.policies, self.complete = {}, False
            self._signed = (remote_count, remote_digest)

    def feed(self, u: PolicyUpdate) -> set[str] | None:
        """Stage one chunk; on the final chunk apply the update and return the tunnel names it
        touched. Raises WireError/AuthError (the session ends) on a bound or digest mismatch."""
        for p in u.upserts:
            self._staged[p.name] = p
        for name in u.removals:
            self._staged[name] = None
        if len(self._staged) > MAX_TUNNELS_PER_PEER + len(self.policies):
            raise WireError(f"policy update larger than {MAX_TUNNELS_PER_PEER} tunnels")
        if not u.final:
            return None
        merged = dict(self.policies)
        for name, pol in self._staged.items():
            if pol is None:
                merged.pop(name, None)
            else:
                merged[name] = pol
        if len(merged) > MAX_TUNNELS_PER_PEER:
            raise WireError(f"peer lists more than {MAX_TUNNELS_PER_PEER} tunnels")
        digest = policy_digest(merged.values())
        wanted = [(u.count, u.digest)] + ([self._signed] if self._signed else [])
        if any(count != len(merged) or d != digest for count, d in wanted):
            raise AuthError("the peer's policy list does not match the digest it signed")
        changed = set(self._staged) if self.complete else set(merged) | set(self.policies)
        self.policies, self._staged, self._signed, self.complete = merged, {}, None, True
        return changed
