"""XFRM numbers from the kernel's uapi (include/uapi/linux/xfrm.h) and the data plane's own
constants and timers, each with the reason for its value.

Only what this package uses is here. Sizes of the C structures are asserted in the unit tests
(tests/dataplane/xfrm/test_messages.py) against ``sizeof`` values from the uapi header.
"""

from __future__ import annotations

import socket
from enum import IntEnum

# -- message types (enum at XFRM_MSG_BASE = 0x10) ----------------------------------------------
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B
XFRM_MSG_FLUSHSA = 0x1C  # never sent: it would delete every SA on the host, not only ours
XFRM_MSG_FLUSHPOLICY = 0x1D  # never sent, same reason

# -- attributes (enum xfrm_attr_type_t) ---------------------------------------------------------
XFRMA_ALG_AUTH = 1
XFRMA_ALG_CRYPT = 2
XFRMA_ALG_COMP = 3
XFRMA_ENCAP = 4
XFRMA_TMPL = 5
XFRMA_SA = 6
XFRMA_POLICY = 7
XFRMA_SEC_CTX = 8
XFRMA_LTIME_VAL = 9
XFRMA_REPLAY_VAL = 10
XFRMA_REPLAY_THRESH = 11
XFRMA_ETIMER_THRESH = 12
XFRMA_SRCADDR = 13
XFRMA_COADDR = 14
XFRMA_LASTUSED = 15
XFRMA_POLICY_TYPE = 16
XFRMA_MIGRATE = 17
XFRMA_ALG_AEAD = 18
XFRMA_KMADDRESS = 19
XFRMA_ALG_AUTH_TRUNC = 20
XFRMA_MARK = 21
XFRMA_TFCPAD = 22
XFRMA_REPLAY_ESN_VAL = 23
XFRMA_SA_EXTRA_FLAGS = 24
XFRMA_PROTO = 25
XFRMA_ADDRESS_FILTER = 26
XFRMA_PAD = 27
XFRMA_OFFLOAD_DEV = 28
XFRMA_SET_MARK = 29
XFRMA_SET_MARK_MASK = 30
XFRMA_IF_ID = 31
XFRMA_MTIMER_THRESH = 32

# -- multicast groups (enum xfrm_nlgroups); joined with NETLINK_ADD_MEMBERSHIP -----------------
XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2

# -- netlink socket options (linux/netlink.h) ----------------------------------------------------
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
# The kernel echoes the whole request in an error answer unless CAP_ACK is set; a refused NEWSA
# would then come back carrying its key. With CAP_ACK only the request's header comes back.
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11  # the kernel's one-line reason ("Requested AEAD algorithm not found")
NETLINK_XFRM = 6

# -- generic netlink header values -------------------------------------------------------------
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the echoed request was cut to its header
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1

AF_UNSPEC = 0
AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)
IPPROTO_ESP = 50

# -- values inside the structures ---------------------------------------------------------------
XFRM_MODE_TRANSPORT = 0
XFRM_MODE_TUNNEL = 1
XFRM_INF = 0xFFFF_FFFF_FFFF_FFFF  # "no limit" for byte and packet lifetimes (0 means "expired")
XFRM_STATE_AF_UNSPEC = 32  # keep a zero selector family-less: one SA carries IPv4 and IPv6
XFRM_STATE_ESN = 128
XFRM_POLICY_ALLOW = 0
XFRM_POLICY_BLOCK = 1
XFRM_SHARE_ANY = 0
XFRM_ALGO_ANY = 0xFFFF_FFFF  # tmpl aalgos/ealgos/calgos: any algorithm (what iproute2 sends)


class Direction(IntEnum):
    """Policy direction (XFRM_POLICY_IN/OUT/FWD)."""

    IN = 0
    OUT = 1
    FWD = 2


# -- the ESP suite this gateway programs -------------------------------------------------------
AEAD_ALGORITHM = "rfc4106(gcm(aes))"  # AES-GCM for ESP (RFC 4106), the kernel's name
AEAD_KEY_LEN = 36  # AES-256 key (32 B) || salt (4 B): 288 bits, as the key schedule derives
AEAD_ICV_BITS = 128  # 16-byte ICV, RFC 4106's strongest; the other choices (8, 12 B) are weaker

# -- the data plane's own choices ---------------------------------------------------------------
# SPIs 1-255 are reserved by IANA (RFC 4303 section 2.1); the upper bound is the field's.
SPI_MIN = 0x100
SPI_MAX = 0xFFFF_FFFF
# Ownership: every SA and policy this gateway installs carries a reqid from this range, far from
# what IKE daemons next to us use (strongSwan numbers reqids from 1 upwards; Libreswan allocates
# just above 0x3fff, PF_KEY's manual-keying limit), so "reqid in range" means "ours".
REQID_MIN = 0x51D0_0000
REQID_MAX = 0x51D0_FFFF
# Priority of our policies (lower wins when a packet matches several). strongSwan's kernel-netlink
# plugin computes 400,000 minus selector specificity for its tunnel policies (375,423 for a /24
# <-> /24 pair) and 200,000 minus specificity for bypass policies, so never below 68,541;
# iproute2 defaults to 0. At 50,000 a packet that matches one of our policies and one of a
# neighbouring IKE daemon's takes ours: the subnets the operator gave this gateway stay under
# its keys (or are dropped when it fails closed). EspTunnelSpec.priority changes it per tunnel.
DEFAULT_POLICY_PRIORITY = 50_000
# Anti-replay window in packets. 128 covers reordering on multi-queue NICs at 10 Gbit/s; the
# kernel's ESN bitmap allows up to 4096 bytes (32768 packets), which nothing here needs.
DEFAULT_REPLAY_WINDOW = 128
MAX_REPLAY_WINDOW = 4096
# A larval SA (ALLOCSPI) is deleted by the kernel after net.core.xfrm_acq_expires seconds
# (default 30). The daemon must install the inbound SA within that time or allocate again.
KERNEL_LARVAL_LIFETIME_DEFAULT = 30

# -- timers -------------------------------------------------------------------------------------
# XFRM requests answer in microseconds; a second means a wedged kernel, a namespace whose socket
# never came up, or an emulated VM under load. 5 s matches the rtnetlink budget in links.py.
XFRM_TIMEOUT = 5.0
# Opening a socket inside a named network namespace runs setns() in a helper thread; that is
# a handful of syscalls, so the same budget is generous.
NETNS_OPEN_TIMEOUT = 5.0
# Receive buffer for answers and notifications: an SA dump message is ~600 B, so 256 KiB holds
# a few hundred notifications queued while the daemon was busy before the kernel reports ENOBUFS.
RCVBUF = 256 * 1024
RECV_SIZE = 64 * 1024  # the kernel never sends a datagram larger than this for XFRM dumps
