"""The `qkd-gateway demo` lab: sites in network namespaces on a bridged WAN, the KME network in
its own namespace, one daemon per site, precise pings and a rotation report. See docs/demo.md.
"""

from gateway.demo.errors import (
    DemoError,
    Interrupted,
    KmsUnreachable,
    LabProcessError,
    NetnsError,
    ToolMissing,
)
from gateway.demo.kmsprobe import kme_status, wait_for_kme
from gateway.demo.lab import DemoOptions, StartSite, gateway_argv, run_demo, start_daemon
from gateway.demo.pinger import Pinger, PingStats
from gateway.demo.processes import LabProcess, ProcessSet, start_in_netns
from gateway.demo.report import MIN_ROTATIONS, DemoReport, TunnelReport
from gateway.demo.rotations import REKEY_EVENT, RotationReader, psk_matches
from gateway.demo.siteconfig import materialize, site_config
from gateway.demo.sites import LabPlan, SitePlan, TunnelPlan, plan_lab, site_names
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
    "KMS_ADDRESS",
    "MAX_SITES",
    "MIN_ROTATIONS",
    "REKEY_EVENT",
    "DemoError",
    "DemoOptions",
    "DemoReport",
    "Interrupted",
    "KmsUnreachable",
    "LabNode",
    "LabPlan",
    "LabProcess",
    "LabProcessError",
    "NetnsError",
    "PingStats",
    "Pinger",
    "ProcessSet",
    "RotationReader",
    "SitePlan",
    "StartSite",
    "ToolMissing",
    "Topology",
    "TunnelPlan",
    "TunnelReport",
    "cleanup",
    "gateway_argv",
    "kme_status",
    "materialize",
    "new_prefix",
    "plan_lab",
    "psk_matches",
    "run_demo",
    "site_config",
    "site_names",
    "stale_prefixes",
    "start_daemon",
    "start_in_netns",
    "wait_for_kme",
]
