#!/usr/bin/env bash
# Shared by every bootstrap step (render.step_script prepends it). Paths are prefixed with
# ${PG_ROOT:-} so the tests can run a step against a temporary root and stub commands.
set -euo pipefail -o errtrace
umask 022
PG_ROOT="${PG_ROOT:-}"
PG_DATA_DIR="${PG_DATA_DIR:-/opt/postal}"
# shellcheck disable=SC2034  # used by the steps
PG_POSTAL_UID=999  # the `postal` user inside ghcr.io/postalserver/postal

pg_log() { printf '[postal-gateway:%s] %s\n' "${PG_STEP:-step}" "$*"; }
pg_fail() { printf '[postal-gateway:%s] ERROR: %s\n' "${PG_STEP:-step}" "$*" >&2; exit 1; }
pg_on_error() { local rc=$?; printf '[postal-gateway:%s] ERROR: line %s exited %s\n' "${PG_STEP:-step}" "$1" "$rc" >&2; }
trap 'pg_on_error "$LINENO"' ERR

# Reads the step's stdin (`<name> <base64>` lines) into files under $PG_PAYLOAD (mode 600),
# removed when the step exits. Secrets never touch the command line or the log.
pg_read_payload() {
  PG_PAYLOAD="$(umask 077 && mktemp -d)"
  trap 'rm -rf "$PG_PAYLOAD"' EXIT
  local name data
  while read -r name data; do
    [[ $name =~ ^[a-z_]+$ ]] || pg_fail "malformed stdin payload line"
    (umask 077 && printf '%s' "$data" | base64 -d >"$PG_PAYLOAD/$name") || pg_fail "payload $name is not base64"
  done
}

pg_need() { [[ -s "$PG_PAYLOAD/$1" ]] || pg_fail "stdin payload lacks $1"; }

# pg_install <mode> <owner> <dest> < content: writes dest only when its content or mode differs.
# Returns 0 when it changed the file, 1 when it was already up to date. The new file is made in
# dest's directory, so it gets that directory's SELinux label (a file moved from /tmp keeps tmp's).
pg_install() {
  local mode=$1 owner=$2 dest=$PG_ROOT$3 tmp
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp "$dest.XXXXXX")"
  cat >"$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest" && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$dest"
  pg_log "wrote $3"
}

# What a step last applied successfully, as a hash of the files it applied (kept in
# /var/lib/postal-gateway). Steps compare against it rather than against "written in this run",
# so a change that a failed run wrote to disk is still applied (restarted into) by the next run.
pg_fingerprint() {
  local file
  for file in "$@"; do
    printf '%s\n' "$file"
    if [[ -f $PG_ROOT$file ]]; then cat "$PG_ROOT$file"; fi
  done | sha256sum | cut -d ' ' -f 1
}
pg_applied() { [[ $(cat "$PG_ROOT/var/lib/postal-gateway/$1.applied" 2>/dev/null || true) == "$2" ]]; }
pg_mark_applied() {
  pg_applied "$1" "$2" || printf '%s\n' "$2" | pg_install 0644 root:root "/var/lib/postal-gateway/$1.applied" || true
}

# Installs the RPM packages that are missing, in one dnf transaction.
pg_dnf_install() {
  local missing=() pkg
  rpm -q --quiet "$@" && return 0
  for pkg in "$@"; do rpm -q --quiet "$pkg" || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    pg_log "installing ${missing[*]}"
    dnf -y -q install "${missing[@]}"
  fi
}

pg_enable_unit() {
  systemctl is-enabled --quiet "$1" || { pg_log "enabling $1"; systemctl enable "$1"; }
  systemctl is-active --quiet "$1" || { pg_log "starting $1"; systemctl start "$1"; }
}

# The image a container was created from, or nothing when it does not exist.
pg_container_image() { docker inspect --format '{{.Config.Image}}' "$1" 2>/dev/null || true; }
# pg_container_stale <name> <image>: succeeds when the container must be created, after removing
# one made from another image (its data lives in bind mounts, so nothing is lost).
pg_container_stale() {
  local current
  current=$(pg_container_image "$1")
  [[ $current != "$2" ]] || return 1
  if [[ -n $current ]]; then
    pg_log "replacing $1 ($current -> $2)"
    docker rm -f "$1" >/dev/null
  fi
}
pg_container_running() { [[ $(docker inspect --format '{{.State.Running}}' "$1" 2>/dev/null || true) == true ]]; }

# pg_wait_http <what> <url> [Host header]: waits up to 5 minutes (PG_WAIT_TRIES x 5 s) for a 2xx answer.
pg_wait_http() {
  local what=$1 url=$2 host=${3:-localhost}
  for _ in $(seq 1 "${PG_WAIT_TRIES:-60}"); do
    curl --silent --fail --output /dev/null --max-time 5 --header "Host: $host" "$url" && return 0
    sleep 5
  done
  pg_fail "$what did not answer $url in 5 minutes"
}

pg_compose() { (cd "$PG_ROOT$PG_DATA_DIR/install" && docker compose -p postal "$@"); }
