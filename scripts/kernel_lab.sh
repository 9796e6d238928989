#!/usr/bin/env bash
# Kernel lab: run the `vm` test tier on a real Debian kernel with WireGuard and ESP, inside QEMU
# (TCG).
#
# The host kernel has no WireGuard and no ESP (see docs/kernel-lab.md), so the kernel data-plane
# backends are tested in a throw-away VM: Debian's stock kernel image is booted by virtme-ng with
# the host's root file system shared read-only over 9p, and pytest runs inside it. Idempotent:
# every step checks whether its result already exists, so a second run only boots the VM.
#
# Usage: scripts/kernel_lab.sh [extra pytest args]
#        scripts/kernel_lab.sh --exec 'COMMAND'   run COMMAND in the guest instead of pytest
#            (from the repository; $LAB_RESULTS is the guest's writable results folder, its
#            exit status is the verdict), e.g. the XFRM benchmark:
#            scripts/kernel_lab.sh --exec '.venv/bin/python -m bench.bench_xfrm'
# Env:   LAB_DIR (default <repo>/.lab), LAB_MEMORY (1G), LAB_TIMEOUT seconds (1800),
#        LAB_SETUP_ONLY=1 to prepare everything without booting.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAB="${LAB_DIR:-$REPO/.lab}"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
RESULTS="$LAB/results"
MEMORY="${LAB_MEMORY:-1G}"
TIMEOUT="${LAB_TIMEOUT:-1800}"

log() { printf 'kernel_lab: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (installs kernel modules under /lib/modules)"
[ -x "$PY" ] || die "no project venv at $VENV: run \`make venv\` first"

ensure_debs() {
    local missing=() p
    # tcpdump: the XFRM tests capture the wire to prove that nothing leaves in clear.
    for p in qemu-system-x86 busybox-static kmod iproute2 iputils-ping wireguard-tools tcpdump; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# Resolve linux-image-amd64 -> linux-image-<ver>-amd64 so the lab follows Debian's current kernel.
resolve_kernel_pkg() {
    local pkg
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg="$(apt-cache depends linux-image-amd64 \
            | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    fi
    [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 (is a Debian main apt source configured?)"
    printf '%s\n' "$pkg"
}

ensure_kernel() {
    local pkg="$1" ver="$2" root="$LAB/kernel/$ver"
    if [ ! -f "$root/boot/vmlinuz-$ver" ]; then
        mkdir -p "$LAB/debs" "$root.partial"
        if ! ls "$LAB/debs/${pkg}_"*.deb >/dev/null 2>&1; then
            log "downloading $pkg"
            (cd "$LAB/debs" && apt-get download -qq "$pkg")
        fi
        log "extracting $pkg"
        dpkg-deb -x "$(ls "$LAB/debs/${pkg}_"*.deb | head -n1)" "$root.partial"
        rm -rf "$root" && mv "$root.partial" "$root"
    fi
    if [ ! -f "/lib/modules/$ver/modules.dep" ] \
        || [ ! -f "/lib/modules/$ver/kernel/drivers/net/wireguard/wireguard.ko" ]; then
        log "installing modules into /lib/modules/$ver"
        mkdir -p /lib/modules
        cp -a "$root/lib/modules/$ver" /lib/modules/
        depmod "$ver"
    fi
}

ensure_vng() {
    if [ ! -x "$VENV/bin/vng" ]; then
        log "installing virtme-ng into $VENV"
        "$VENV/bin/pip" install -q virtme-ng
    fi
}

# Modules the guest loads before anything runs: kernel WireGuard, and ESP with AES-GCM, XFRM
# netlink and XFRM interfaces for the IPsec data plane. A failure here leaves no verdict (FAIL).
GUEST_MODULES="wireguard esp4 esp6 gcm xfrm_user xfrm_interface"

# The verdict of an --exec run: the guest wrote the command's exit status.
check_exec_verdict() {
    local verdict="$RESULTS/verdict"
    if [ ! -f "$verdict" ]; then
        log "FAIL: the guest wrote no verdict (did it boot? see $LAB/vng.log)"
        return 1
    fi
    log "guest $(cat "$verdict")"
    [ "$(cat "$verdict")" = "exec_rc=0" ] || { log "FAIL"; return 1; }
    log "PASS"
}

# Reads the verdict the guest wrote; never trusts vng's exit status (a crashed guest can exit 0).
check_verdict() {
    "$PY" - "$RESULTS" <<'PYEOF'
import pathlib
import sys
import xml.etree.ElementTree as ET

results = pathlib.Path(sys.argv[1])
junit = results / "junit.xml"
verdict = results / "verdict"
if not verdict.exists() or not junit.exists():
    print("kernel_lab: FAIL: the guest wrote no verdict (did it boot? see vng.log)")
    sys.exit(1)
rc = verdict.read_text().strip()
root = ET.parse(junit).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
assert suite is not None
tests, fail, err, skip = (int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped"))
ran = tests - skip
print(f"kernel_lab: guest {rc}; tests={tests} ran={ran} failures={fail} errors={err} skipped={skip}")
if rc != "pytest_rc=0" or fail or err or ran <= 0:
    print("kernel_lab: FAIL")
    sys.exit(1)
print("kernel_lab: PASS")
PYEOF
}

main() {
    ensure_debs
    local pkg ver
    pkg="$(resolve_kernel_pkg)"
    ver="${pkg#linux-image-}"
    ensure_kernel "$pkg" "$ver"
    ensure_vng
    if [ "${LAB_SETUP_ONLY:-0}" = 1 ]; then
        log "setup done (kernel $ver); not booting because LAB_SETUP_ONLY=1"
        return 0
    fi

    rm -rf "$RESULTS" && mkdir -p "$RESULTS"
    local guest_cmd exec_mode=0
    local setup="cd $(printf '%q' "$REPO") && modprobe -a $GUEST_MODULES && \
PYTHONDONTWRITEBYTECODE=1 QKD_KERNEL_LAB=1 QKD_SLOW_TESTS=$(printf '%q' "${QKD_SLOW_TESTS:-0}") \
LAB_RESULTS=$(printf '%q' "$RESULTS")"
    if [ "${1:-}" = "--exec" ]; then
        [ $# -eq 2 ] || die "--exec takes one argument: the command to run in the guest"
        exec_mode=1
        guest_cmd="$setup PATH=$(printf '%q' "$VENV/bin"):\$PATH bash -c $(printf '%q' "$2") \
> $(printf '%q' "$RESULTS/exec.log") 2>&1; echo exec_rc=\$? > $(printf '%q' "$RESULTS/verdict")"
    else
        # The guest sees the host tree read-only: no bytecode, no pytest cache, results to the
        # rwdir.
        local extra="" a
        for a in "$@"; do extra+=" $(printf '%q' "$a")"; done
        guest_cmd="$setup $(printf '%q' "$PY") -m pytest -m vm tests/vm \
-p no:cacheprovider -q --junitxml=$(printf '%q' "$RESULTS/junit.xml")$extra \
> $(printf '%q' "$RESULTS/pytest.log") 2>&1; echo pytest_rc=\$? > $(printf '%q' "$RESULTS/verdict")"
    fi

    log "booting $ver under QEMU TCG (this takes a few minutes)"
    local start=$SECONDS
    set +e
    PATH="$VENV/bin:$PATH" timeout "$TIMEOUT" "$VENV/bin/vng" --run "$LAB/kernel/$ver/boot/vmlinuz-$ver" \
        --disable-kvm --disable-microvm --force-9p --memory "$MEMORY" \
        --rwdir "$RESULTS" --exec "$guest_cmd" >"$LAB/vng.log" 2>&1
    local vng_rc=$?
    set -e
    log "vm run took $((SECONDS - start)) s (vng exit $vng_rc; log: $LAB/vng.log)"
    if [ "$exec_mode" = 1 ]; then
        [ -f "$RESULTS/exec.log" ] && cat "$RESULTS/exec.log" >&2
        check_exec_verdict
        return
    fi
    [ -f "$RESULTS/pytest.log" ] && cat "$RESULTS/pytest.log" >&2
    check_verdict
}

main "$@"
