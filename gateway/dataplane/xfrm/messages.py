"""The XFRM netlink structures of include/uapi/linux/xfrm.h on pyroute2's message framework.

pyroute2 0.9 ships only the NETLINK_XFRM number; these classes describe the payloads with its
``fields`` / ``nla_map`` machinery. Nested C structures are flattened into prefixed fields
(``sel_daddr``, ``lft_soft_byte_limit``, ...) with the compiler's padding written out, so each
class encodes to exactly ``sizeof`` of its C structure on x86-64 and aarch64 (checked by the unit
tests). Network-order fields (SPI, ports) use ``>`` formats; everything else is host order.

Variable-length attributes (the AEAD key, the template list) have small codecs of their own.
Nothing here logs or formats values: some messages carry key bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from pyroute2.netlink import nla, nlmsg

from gateway.dataplane.xfrm import consts as c

__all__ = [
    "MESSAGE_CLASSES",
    "xfrm_user_acquire",
    "xfrm_user_expire",
    "xfrm_userpolicy_id",
    "xfrm_userpolicy_info",
    "xfrm_usersa_id",
    "xfrm_usersa_info",
    "xfrm_userspi_info",
]

Fields = tuple[tuple[str, str], ...]


def selector(prefix: str) -> Fields:
    """struct xfrm_selector (56 bytes)."""
    return (
        (f"{prefix}daddr", "16s"),
        (f"{prefix}saddr", "16s"),
        (f"{prefix}dport", ">H"),
        (f"{prefix}dport_mask", ">H"),
        (f"{prefix}sport", ">H"),
        (f"{prefix}sport_mask", ">H"),
        (f"{prefix}family", "H"),
        (f"{prefix}prefixlen_d", "B"),
        (f"{prefix}prefixlen_s", "B"),
        (f"{prefix}proto", "B"),
        (f"{prefix}pad", "3x"),
        (f"{prefix}ifindex", "i"),
        (f"{prefix}user", "I"),
    )


LIFETIME_CFG_NAMES = (
    "soft_byte_limit", "hard_byte_limit", "soft_packet_limit", "hard_packet_limit",
    "soft_add_expires_seconds", "hard_add_expires_seconds",
    "soft_use_expires_seconds", "hard_use_expires_seconds",
)
LIFETIME_CUR_NAMES = ("bytes", "packets", "add_time", "use_time")


def lifetime_cfg(prefix: str) -> Fields:
    """struct xfrm_lifetime_cfg (64 bytes)."""
    return tuple((f"{prefix}{n}", "Q") for n in LIFETIME_CFG_NAMES)


def lifetime_cur(prefix: str) -> Fields:
    """struct xfrm_lifetime_cur (32 bytes)."""
    return tuple((f"{prefix}{n}", "Q") for n in LIFETIME_CUR_NAMES)


def xfrm_id(prefix: str) -> Fields:
    """struct xfrm_id (24 bytes)."""
    return ((f"{prefix}daddr", "16s"), (f"{prefix}spi", ">I"), (f"{prefix}proto", "B"),
            (f"{prefix}pad", "3x"))


SA_INFO: Fields = (
    *selector("sel_"),
    *xfrm_id("id_"),
    ("saddr", "16s"),
    *lifetime_cfg("lft_"),
    *lifetime_cur("curlft_"),
    ("stats_replay_window", "I"),
    ("stats_replay", "I"),
    ("stats_integrity_failed", "I"),
    ("seq", "I"),
    ("reqid", "I"),
    ("family", "H"),
    ("mode", "B"),
    ("replay_window", "B"),
    ("flags", "B"),
    ("pad_end", "7x"),
)  # struct xfrm_usersa_info, 224 bytes


def policy_info(prefix: str) -> Fields:
    """struct xfrm_userpolicy_info (168 bytes)."""
    return (
        *selector(f"{prefix}sel_"),
        *lifetime_cfg(f"{prefix}lft_"),
        *lifetime_cur(f"{prefix}curlft_"),
        (f"{prefix}priority", "I"),
        (f"{prefix}index", "I"),
        (f"{prefix}dir", "B"),
        (f"{prefix}action", "B"),
        (f"{prefix}flags", "B"),
        (f"{prefix}share", "B"),
        (f"{prefix}pad_end", "4x"),
    )


# struct xfrm_user_tmpl, 64 bytes: id.daddr, id.spi (be), id.proto, pad, family, pad, saddr,
# reqid, mode, share, optional, pad, aalgos, ealgos, calgos
_TMPL = struct.Struct("=16s4sB3xH2x16sIBBBxIII")
_SPI = struct.Struct(">I")
TMPL_SIZE = _TMPL.size
TMPL_KEYS = ("daddr", "spi", "proto", "family", "saddr", "reqid", "mode", "share", "optional",
             "aalgos", "ealgos", "calgos")


class _XfrmAttrs:
    """The XFRMA_* attribute table and its structure types, shared by every message class."""

    __slots__ = ()
    nla_map = (
        (c.XFRMA_ALG_AUTH, "XFRMA_ALG_AUTH", "cdata"),
        (c.XFRMA_ALG_CRYPT, "XFRMA_ALG_CRYPT", "cdata"),
        (c.XFRMA_ALG_COMP, "XFRMA_ALG_COMP", "cdata"),
        (c.XFRMA_ENCAP, "XFRMA_ENCAP", "cdata"),
        (c.XFRMA_TMPL, "XFRMA_TMPL", "user_tmpl"),
        (c.XFRMA_SA, "XFRMA_SA", "cdata"),
        (c.XFRMA_POLICY, "XFRMA_POLICY", "cdata"),
        (c.XFRMA_SEC_CTX, "XFRMA_SEC_CTX", "cdata"),
        (c.XFRMA_LTIME_VAL, "XFRMA_LTIME_VAL", "ltime_val"),
        (c.XFRMA_REPLAY_VAL, "XFRMA_REPLAY_VAL", "replay_val"),
        (c.XFRMA_REPLAY_THRESH, "XFRMA_REPLAY_THRESH", "uint32"),
        (c.XFRMA_ETIMER_THRESH, "XFRMA_ETIMER_THRESH", "uint32"),
        (c.XFRMA_SRCADDR, "XFRMA_SRCADDR", "cdata"),
        (c.XFRMA_COADDR, "XFRMA_COADDR", "cdata"),
        (c.XFRMA_LASTUSED, "XFRMA_LASTUSED", "uint64"),
        (c.XFRMA_POLICY_TYPE, "XFRMA_POLICY_TYPE", "cdata"),
        (c.XFRMA_MIGRATE, "XFRMA_MIGRATE", "cdata"),
        (c.XFRMA_ALG_AEAD, "XFRMA_ALG_AEAD", "algo_aead"),
        (c.XFRMA_KMADDRESS, "XFRMA_KMADDRESS", "cdata"),
        (c.XFRMA_ALG_AUTH_TRUNC, "XFRMA_ALG_AUTH_TRUNC", "cdata"),
        (c.XFRMA_MARK, "XFRMA_MARK", "mark"),
        (c.XFRMA_TFCPAD, "XFRMA_TFCPAD", "uint32"),
        (c.XFRMA_REPLAY_ESN_VAL, "XFRMA_REPLAY_ESN_VAL", "replay_esn"),
        (c.XFRMA_SA_EXTRA_FLAGS, "XFRMA_SA_EXTRA_FLAGS", "uint32"),
        (c.XFRMA_PROTO, "XFRMA_PROTO", "uint8"),
        (c.XFRMA_ADDRESS_FILTER, "XFRMA_ADDRESS_FILTER", "cdata"),
        (c.XFRMA_PAD, "XFRMA_PAD", "none"),
        (c.XFRMA_OFFLOAD_DEV, "XFRMA_OFFLOAD_DEV", "cdata"),
        (c.XFRMA_SET_MARK, "XFRMA_SET_MARK", "uint32"),
        (c.XFRMA_SET_MARK_MASK, "XFRMA_SET_MARK_MASK", "uint32"),
        (c.XFRMA_IF_ID, "XFRMA_IF_ID", "uint32"),
        (c.XFRMA_MTIMER_THRESH, "XFRMA_MTIMER_THRESH", "uint32"),
    )

    class algo_aead(nla):  # type: ignore[misc]
        """struct xfrm_algo_aead followed by the key (``alg_key``, bytes)."""

        __slots__ = ()
        fields = (("alg_name", "64s"), ("alg_key_len", "I"), ("alg_icv_len", "I"))

        def ft_encode(self, offset: int) -> tuple[int, int]:
            offset, _ = nla.ft_encode(self, offset)  # 72 bytes: already aligned
            key = bytes(self["alg_key"])
            pad = -len(key) % 4
            self.data.extend(key + bytes(pad))
            return offset + len(key) + pad, pad

        def ft_decode(self, offset: int) -> None:
            nla.ft_decode(self, offset)
            start = offset + struct.calcsize("=64sII")
            self["alg_key"] = bytes(self.data[start:self.offset + self.length])

    class user_tmpl(nla):  # type: ignore[misc]
        """One or more struct xfrm_user_tmpl; the value is a list of dicts (see TMPL_KEYS)."""

        __slots__ = ()
        fields = ()

        def ft_encode(self, offset: int) -> tuple[int, int]:
            for t in self["templates"]:
                self.data.extend(_TMPL.pack(
                    t["daddr"], _SPI.pack(t["spi"]), t["proto"], t["family"], t["saddr"],
                    t["reqid"], t["mode"], t["share"], t["optional"], t["aalgos"], t["ealgos"],
                    t["calgos"]))
                offset += TMPL_SIZE
            return offset, 0

        def ft_decode(self, offset: int) -> None:
            end = self.offset + self.length
            out = []
            while offset + TMPL_SIZE <= end:
                values: list[Any] = list(_TMPL.unpack_from(self.data, offset))
                values[1] = _SPI.unpack(values[1])[0]
                out.append(dict(zip(TMPL_KEYS, values, strict=True)))
                offset += TMPL_SIZE
            self["templates"] = out

    class mark(nla):  # type: ignore[misc]
        __slots__ = ()
        fields = (("v", "I"), ("m", "I"))

    class ltime_val(nla):  # type: ignore[misc]
        __slots__ = ()
        fields = lifetime_cur("")

    class replay_val(nla):  # type: ignore[misc]
        __slots__ = ()
        fields = (("oseq", "I"), ("seq", "I"), ("bitmap", "I"))

    class replay_esn(nla):  # type: ignore[misc]
        """struct xfrm_replay_state_esn. Sent without the bitmap (24 bytes, as iproute2 does:
        the kernel allocates it); the bitmap the kernel reports is not decoded."""

        __slots__ = ()
        fields = (("bmp_len", "I"), ("oseq", "I"), ("seq", "I"), ("oseq_hi", "I"),
                  ("seq_hi", "I"), ("replay_window", "I"))


class xfrm_usersa_info(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """NEWSA / UPDSA requests and answers, GETSA answers and dumps."""

    __slots__ = ()
    fields = SA_INFO


class xfrm_usersa_id(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """GETSA / DELSA requests (24 bytes)."""

    __slots__ = ()
    fields = (("daddr", "16s"), ("spi", ">I"), ("family", "H"), ("proto", "B"), ("pad", "1x"))


class xfrm_userspi_info(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """ALLOCSPI requests (232 bytes); the answer is an xfrm_usersa_info."""

    __slots__ = ()
    fields = (*SA_INFO, ("min", "I"), ("max", "I"))


class xfrm_userpolicy_info(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """NEWPOLICY / UPDPOLICY requests, GETPOLICY answers and dumps (168 bytes)."""

    __slots__ = ()
    fields = policy_info("")


class xfrm_userpolicy_id(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """GETPOLICY / DELPOLICY requests (64 bytes)."""

    __slots__ = ()
    fields = (*selector("sel_"), ("index", "I"), ("dir", "B"), ("pad", "3x"))


class xfrm_user_expire(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """EXPIRE notifications (232 bytes): the SA and whether the hard limit was reached."""

    __slots__ = ()
    fields = (*SA_INFO, ("hard", "B"), ("pad_hard", "7x"))


class xfrm_user_acquire(_XfrmAttrs, nlmsg):  # type: ignore[misc]
    """ACQUIRE notifications (280 bytes): a packet matched a policy that has no SA."""

    __slots__ = ()
    fields = (
        *xfrm_id("id_"),
        ("saddr", "16s"),
        *selector("sel_"),
        *policy_info("pol_"),
        ("aalgos", "I"),
        ("ealgos", "I"),
        ("calgos", "I"),
        ("seq", "I"),
    )


# What the kernel sends for each message type (answers, dumps and notifications).
MESSAGE_CLASSES: dict[int, type[nlmsg]] = {
    c.XFRM_MSG_NEWSA: xfrm_usersa_info,
    c.XFRM_MSG_UPDSA: xfrm_usersa_info,
    c.XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
    c.XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
    c.XFRM_MSG_EXPIRE: xfrm_user_expire,
    c.XFRM_MSG_ACQUIRE: xfrm_user_acquire,
}
