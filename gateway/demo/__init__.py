"""The `qkd-gateway demo` lab: sites in network namespaces on a bridged WAN, the KME network in
its own namespace, one daemon per site, precise pings, a live view and a verdict. The default
topology is RoNaQCI (six cities, trusted nodes, two KME networks). See docs/demo.md.
"""

from gateway.demo.consumer import Backup, BackupStats
from gateway.demo.errors import (
    DemoError,
    Interrupted,
    KmsUnreachable,
    LabProcessError,
    NetnsError,
    ToolMissing,
)
from gateway.demo.keyrate import fibre_km, great_circle_km, secret_key_rate_bps
from gateway.demo.kmsplan import KmePlan, KmsPlan, LinkPlan
from gateway.demo.kmsprobe import kme_request, kme_status, wait_for_kme
from gateway.demo.lab import (
    TOPOLOGIES,
    DemoOptions,
    StartSite,
    gateway_argv,
    plan_for,
    run_demo,
    start_daemon,
)
from gateway.demo.mqttrelay import TcpRelay
from gateway.demo.observe import LabObserver, TunnelState
from gateway.demo.pinger import Pinger, PingStats
from gateway.demo.processes import LabProcess, ProcessSet, start_in_netns
from gateway.demo.report import MIN_ROTATIONS, DemoReport, TunnelReport
from gateway.demo.ronaqci import plan_ronaqci
from gateway.demo.rotations import REKEY_EVENT, RotationReader, psk_matches
from gateway.demo.siteconfig import materialize, site_config
from gateway.demo.sites import (
    DATAPLANES,
    KMS_PATH_NAME,
    LabPlan,
    SitePlan,
    TunnelPlan,
    plan_lab,
    site_names,
)
from gateway.demo.topology import (
    KMS_ADDRESS,
    MAX_SITES,
    LabNode,
    Topology,
    cleanup,
    new_prefix,
    stale_prefixes,
)

__all__ = [
    "DATAPLANES",
    "KMS_ADDRESS",
    "KMS_PATH_NAME",
    "MAX_SITES",
    "MIN_ROTATIONS",
    "REKEY_EVENT",
    "TOPOLOGIES",
    "Backup",
    "BackupStats",
    "DemoError",
    "DemoOptions",
    "DemoReport",
    "Interrupted",
    "KmePlan",
    "KmsPlan",
    "KmsUnreachable",
    "LabNode",
    "LabObserver",
    "LabPlan",
    "LabProcess",
    "LabProcessError",
    "LinkPlan",
    "NetnsError",
    "PingStats",
    "Pinger",
    "ProcessSet",
    "RotationReader",
    "SitePlan",
    "StartSite",
    "TcpRelay",
    "ToolMissing",
    "Topology",
    "TunnelPlan",
    "TunnelReport",
    "TunnelState",
    "cleanup",
    "fibre_km",
    "gateway_argv",
    "great_circle_km",
    "kme_request",
    "kme_status",
    "materialize",
    "new_prefix",
    "plan_for",
    "plan_lab",
    "plan_ronaqci",
    "psk_matches",
    "run_demo",
    "secret_key_rate_bps",
    "site_config",
    "site_names",
    "stale_prefixes",
    "start_daemon",
    "start_in_netns",
    "wait_for_kme",
]
