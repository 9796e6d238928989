#!/usr/bin/env bash
# Build qkd-gateway_<version>-<rev>_amd64.deb with dpkg-deb (no debhelper, no network at install
# time). Usage: packaging/build_deb.sh [OUT_DIR]   (default: build/deb)
#
# Layout (see docs/deploy.md):
#   /usr/lib/qkd-gateway/            private venv on Debian's /usr/bin/python3 (3.11), with the
#                                    project and its Python dependencies; no .pyc shipped (postinst
#                                    compiles them, prerm removes them)
#   /usr/bin/qkd-gateway             -> ../lib/qkd-gateway/bin/qkd-gateway
#   /lib/systemd/system/             qkd-gateway.service, qkd-gateway-failsafe.{service,timer}
#   /usr/share/qkd-gateway/systemd/  optional drop-ins (wireguard-go.conf)
#   /etc/qkd-gateway/                gateway.yaml (conffile skeleton), credentials/ (0700)
#   /usr/share/doc/qkd-gateway/      README, docs, example configurations, copyright
#
# The venv is built at a staging path and relocated: Python's venvs hold their own path only in
# the console-script shebangs, the activate scripts and pip's direct_url.json; all three are
# rewritten or removed, and a check below refuses a package that still names the staging path.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$REPO/build/deb}")
# Debian 12's interpreter, never a pyenv/virtualenv python: the package runs on /usr/bin/python3.
SYSTEM_PYTHON=/usr/bin/python3
PREFIX=/usr/lib/qkd-gateway
REVISION=1

die() { echo "build_deb: $*" >&2; exit 1; }

[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON missing: apt-get install --no-install-recommends python3"
"$SYSTEM_PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
  || die "$SYSTEM_PYTHON has no venv/ensurepip: apt-get install --no-install-recommends python3-venv"
command -v dpkg-deb >/dev/null || die "dpkg-deb missing: apt-get install --no-install-recommends dpkg"

PYVER=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/gateway/__init__.py")
[ -n "$VERSION" ] || die "cannot read __version__ from gateway/__init__.py"
ARCH=$(dpkg --print-architecture)
DEBVER="$VERSION-$REVISION"

STAGE="$OUT/stage"
ROOT="$STAGE/root"
rm -rf "$STAGE"
mkdir -p "$ROOT/DEBIAN" "$OUT"

# --- the private venv ----------------------------------------------------------------------
VENV="$ROOT$PREFIX"
"$SYSTEM_PYTHON" -m venv "$VENV"
# Runtime dependencies only (no [test]/[lint] extras); wheels for cp311/manylinux.
"$VENV/bin/python" -m pip install --quiet --no-compile --no-warn-script-location \
  --disable-pip-version-check "$REPO"
"$VENV/bin/python" -m pip uninstall --quiet --yes pip setuptools >/dev/null
rm -f "$VENV"/bin/activate* "$VENV"/bin/Activate.ps1 "$VENV"/bin/pip* "$VENV"/bin/easy_install*
find "$VENV" -name '__pycache__' -type d -prune -exec rm -rf {} +
find "$VENV" -name 'direct_url.json' -delete
# Python 3.11 records the creating command line (with the staging path) in pyvenv.cfg.
sed -i "s|$VENV|$PREFIX|g" "$VENV/pyvenv.cfg"
# Shebangs of the console scripts: the staging path becomes the installed one.
for f in "$VENV"/bin/*; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  if head -c 2 "$f" | grep -q '#!'; then
    sed -i "1s|^#!.*$|#!$PREFIX/bin/python|" "$f"
  fi
done
# RECORD files list the scripts with their hashes; the rewritten shebang changes them. pip only
# reads RECORD to uninstall, which never happens inside this package, but keep them honest.
"$VENV/bin/python" - "$VENV" <<'EOF'
import base64, csv, hashlib, io, pathlib, sys
venv = pathlib.Path(sys.argv[1])
for record in venv.glob("lib/python*/site-packages/*.dist-info/RECORD"):
    site = record.parent.parent
    rows = list(csv.reader(io.StringIO(record.read_text())))
    for row in rows:
        path = (site / row[0]).resolve()
        if row[1] and path.is_file() and venv / "bin" in path.parents:
            digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest())
            row[1] = "sha256=" + digest.rstrip(b"=").decode()
            row[2] = str(path.stat().st_size)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue())
EOF
if grep -rIl --exclude-dir=__pycache__ "$STAGE" "$VENV" >/dev/null; then
  grep -rIl "$STAGE" "$VENV" >&2
  die "the staging path is still named in the files above"
fi
# bin/python3 is a symlink to /usr/bin/python3 (bin/python -> python3): keep them absolute, never into the build tree.
[ "$(readlink "$VENV/bin/python3")" = "$SYSTEM_PYTHON" ] \
  || die "venv python3 is $(readlink "$VENV/bin/python3"), expected $SYSTEM_PYTHON"

mkdir -p "$ROOT/usr/bin"
ln -s "../lib/qkd-gateway/bin/qkd-gateway" "$ROOT/usr/bin/qkd-gateway"

# --- systemd units, drop-ins, configuration skeleton, docs -------------------------------------
install -D -m 0644 -t "$ROOT/lib/systemd/system" \
  "$REPO/systemd/qkd-gateway.service" \
  "$REPO/systemd/qkd-gateway-failsafe.service" \
  "$REPO/systemd/qkd-gateway-failsafe.timer"
install -D -m 0644 -t "$ROOT/usr/share/qkd-gateway/systemd" "$REPO"/systemd/dropins/*.conf
install -d -m 0755 "$ROOT/etc/qkd-gateway"
install -d -m 0700 "$ROOT/etc/qkd-gateway/credentials"
install -m 0644 "$REPO/packaging/gateway.yaml" "$ROOT/etc/qkd-gateway/gateway.yaml"

DOC="$ROOT/usr/share/doc/qkd-gateway"
install -D -m 0644 -t "$DOC" "$REPO/README.md" "$REPO"/docs/*.md
install -D -m 0644 -t "$DOC/examples/pair" "$REPO"/configs/pair/*.yaml
install -D -m 0644 -t "$DOC/examples/ronaqci" "$REPO"/configs/ronaqci/*.yaml
install -m 0644 "$REPO/packaging/copyright" "$DOC/copyright"
{
  echo "qkd-gateway ($DEBVER) unstable; urgency=medium"
  echo
  echo "  * Built from git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  echo " -- qkd-gateway maintainers <qkd-gateway@invalid>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n > "$DOC/changelog.Debian.gz"
chmod 0644 "$DOC/changelog.Debian.gz"

# --- control files -----------------------------------------------------------------------------
for script in postinst prerm postrm; do
  install -m 0755 "$REPO/packaging/debian/$script" "$ROOT/DEBIAN/$script"
done
(cd "$ROOT" && find etc -type f | sed 's|^|/|' | sort) > "$ROOT/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s|@VERSION@|$DEBVER|" -e "s|@ARCH@|$ARCH|" -e "s|@SIZE@|$SIZE|" \
    -e "s|@PYMIN@|$PYVER|" -e "s|@PYMAX@|${PYVER%.*}.$(( ${PYVER#*.} + 1 ))|" \
    "$REPO/packaging/debian/control.in" > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z \
  | xargs -0 md5sum | sed 's|  \./|  |') > "$ROOT/DEBIAN/md5sums"

DEB="$OUT/qkd-gateway_${DEBVER}_${ARCH}.deb"
rm -f "$OUT"/qkd-gateway_*.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
rm -rf "$STAGE"
echo "$DEB"
