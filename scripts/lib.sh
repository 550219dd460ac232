# Shared by the scripts: paths, logging, idempotent installs. Source it; do not run it.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN=/usr/lib/postgresql/15/bin
# State lives under /tmp: a clone in a private (0700) folder would keep the postgres user out.
LOCO_STATE_DIR="${LOCO_STATE_DIR:-/tmp/loco-state-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# apt_install PKG... : installs what is missing, once per machine (idempotent).
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}"
  say "installing ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
      || die "apt-get install ${missing[*]} failed"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

ensure_swift() {
  command -v swift >/dev/null 2>&1 || [ -x /opt/swift/usr/bin/swift ] || die "Swift 6.3 is not installed (expected /opt/swift/usr/bin/swift)"
  command -v swift >/dev/null 2>&1 || export PATH="/opt/swift/usr/bin:$PATH"
}

# pgqueuer_venv: prints the path of a venv with PgQueuer 1.6.0 (pinned, so every benchmark
# measures the same one), asyncpg and uvloop, installing them from PyPI the first time.
pgqueuer_venv() {
  local venv="$LOCO_STATE_DIR/pgqueuer-venv"
  if ! "$venv/bin/python" -c "import pgqueuer, asyncpg, uvloop; assert pgqueuer.__version__ == '1.6.0'" 2>/dev/null; then
    say "installing PgQueuer 1.6.0 into $venv (from PyPI)"
    python3 -m venv "$venv" >&2 || die "python3 -m venv failed; apt-get install -y python3-venv, or pass --without-pgqueuer"
    "$venv/bin/pip" install -q "pgqueuer==1.6.0" asyncpg uvloop >&2 \
      || die "pip could not install pgqueuer==1.6.0 (no PyPI here?); pass --without-pgqueuer to measure Loco alone"
  fi
  echo "$venv"
}
