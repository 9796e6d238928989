#!/usr/bin/env bash
# `make demo-vm`: `qkd-gateway demo` inside the kernel lab (Debian's kernel under QEMU TCG, with
# kernel WireGuard and ESP/AES-GCM), for the data planes this host's kernel cannot run:
# --dataplane xfrm (ESP tunnels), kernel (kernel WireGuard over netlink), mixed (both kinds, one
# site carrying one of each).
#
# Usage: scripts/demo_vm.sh [DATAPLANE [extra `qkd-gateway demo` options]]
#        DATAPLANE: xfrm (default) | kernel | mixed | wireguard
# The lab is 5-10x slower than the host, so the demo there is smaller and shorter by default:
# the star topology with 3 sites (the hub carries two tunnels), 40 s of pings, a rotation every
# 5 s. Extra options replace those defaults they name, e.g.
#   scripts/demo_vm.sh mixed --duration 90
#   scripts/demo_vm.sh xfrm --topology pair       (two sites; --sites goes with star only)
# The demo's own report and verdict are printed at the end; the exit status is the demo's.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATAPLANE="${1:-xfrm}"
[ $# -gt 0 ] && shift
case "$DATAPLANE" in
    xfrm|kernel|mixed|wireguard) ;;
    *) echo "demo_vm: unknown data plane '$DATAPLANE': choose xfrm, kernel, mixed or wireguard" >&2
       exit 2 ;;
esac

given=" $* "
LAB_DEFAULTS=()
case "$given" in *" --topology "*|*" --sites "*) ;; *) LAB_DEFAULTS+=(--topology star --sites 3) ;; esac
case "$given" in *" --duration "*) ;; *) LAB_DEFAULTS+=(--duration 40) ;; esac
case "$given" in *" --rekey-interval "*) ;; *) LAB_DEFAULTS+=(--rekey-interval 5) ;; esac
args=(--dataplane "$DATAPLANE" --plain "${LAB_DEFAULTS[@]}" "$@")
cmd="qkd-gateway demo"
for a in "${args[@]}"; do cmd+=" $(printf '%q' "$a")"; done

echo "demo_vm: the kernel lab (QEMU TCG) runs 5-10x slower than this host, so the demo there" \
     "defaults to --topology star --sites 3 --duration 40 --rekey-interval 5 (the host's" \
     "default is RoNaQCI, six sites, until Ctrl-C); a ping answered within 5 s counts there" >&2
echo "demo_vm: in the guest: $cmd" >&2
# The demo's output (progress lines, report, verdict) comes back in the guest's exec.log, which
# kernel_lab.sh prints when the VM is done; the guest's exit status is the demo's verdict.
# A loaded 2-core host slows the guest further (a 3-site demo took 11 min at load average 8):
# the VM gets 40 min unless LAB_TIMEOUT says otherwise.
LAB_TIMEOUT="${LAB_TIMEOUT:-2400}" exec bash "$REPO/scripts/kernel_lab.sh" --exec "$cmd"
