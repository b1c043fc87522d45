#!/usr/bin/env bash
# Shared by every bootstrap step (render.step_script prepends it). Paths are prefixed with
# ${PG_ROOT:-} so the tests can run a step against a temporary root and stub commands.
#
# Every action runs where `set -e` applies: never on the left of ||/&& nor inside an `if`
# condition (bash ignores `set -e` there, also in the functions called from there). Helpers
# that act report what they did in PG_RESULT (changed / unchanged, or what the caller must do);
# a failed action ends the step before anything is recorded as applied.
set -euo pipefail -o errtrace
shopt -s inherit_errexit
umask 022
PG_ROOT="${PG_ROOT:-}"
PG_DATA_DIR="${PG_DATA_DIR:-/opt/postal}"
# shellcheck disable=SC2034  # used by the steps
PG_POSTAL_UID=999 # the `postal` user inside ghcr.io/postalserver/postal
PG_RESULT=
PG_PAYLOAD=
PG_PENDING=

pg_log() { printf '[postal-gateway:%s] %s\n' "${PG_STEP:-step}" "$*"; }
pg_fail() {
  printf '[postal-gateway:%s] ERROR: %s\n' "${PG_STEP:-step}" "$*" >&2
  exit 1
}
[[ ${PG_WAIT_TRIES:-60} =~ ^[0-9]+$ ]] || pg_fail "PG_WAIT_TRIES must be a whole number"
pg_on_error() { # reported once, by the step's own shell (not again by a failed $(…))
  local rc=$?
  if [[ $BASHPID != "$$" ]]; then return 0; fi
  printf '[postal-gateway:%s] ERROR: line %s exited %s\n' "${PG_STEP:-step}" "$1" "$rc" >&2
}
# Everything a step prints is also kept for the bootstrap log (Pulumi hides the output of steps
# that receive secrets): appended at exit to $PG_DATA_DIR/log/bootstrap.log (root only) once the
# data disk is mounted, with every line that holds a secret value withheld: any line (8 characters
# or more) of a payload file, and the program sends the values inside its documents (postal.yml,
# the provisioning JSON) as the payload file `withhold`.
umask 077
PG_OUTPUT=$(mktemp)
umask 022
exec 3>&1 4>&2
exec > >(tee -a "$PG_OUTPUT")
PG_TEE_OUT=$!
exec 2> >(tee -a "$PG_OUTPUT" >&4)
PG_TEE_ERR=$!
# pg_write_log <exit code> <withheld lines>: returns non-zero when the log could not be written.
pg_write_log() {
  local rc=$1 log=$PG_ROOT$PG_DATA_DIR/log
  if ! findmnt --mountpoint "$PG_ROOT$PG_DATA_DIR" >/dev/null; then return 0; fi
  umask 077
  if [[ ! -d $log ]]; then mkdir -p "$log" || return 1; fi
  {
    TZ=UTC printf '=== %(%Y-%m-%dT%H:%M:%SZ)T %s exit %s\n' -1 "${PG_STEP:-step}" "$rc"
    awk -v output="$PG_OUTPUT" 'FILENAME != output { if (length($0) >= 8) secret[$0]; next }
         { for (s in secret) if (index($0, s)) { $0 = "[postal-gateway] (line withheld: it held a secret)"; break }
           print }' <(printf '%s\n' "$2") "$PG_OUTPUT"
  } >>"$log/bootstrap.log"
}
# At exit the secrets go first (the decoded payload, a half-written file), whatever fails after
# them: errexit is off here, so a bootstrap log that cannot be written (a full or dead data disk)
# is reported and fails the step, and the raw output is removed in any case.
pg_on_exit() {
  local rc=$? withheld='' file
  set +e
  trap - ERR
  if [[ -n $PG_PAYLOAD ]]; then
    for file in "$PG_PAYLOAD"/*; do
      if [[ -f $file ]]; then withheld+=$(<"$file")$'\n'; fi
    done
    rm -rf "$PG_PAYLOAD"
  fi
  if [[ -n $PG_PENDING ]]; then rm -f "$PG_PENDING"; fi
  exec 1>&3 2>&4
  wait "$PG_TEE_OUT" "$PG_TEE_ERR"
  if ! pg_write_log "$rc" "$withheld"; then
    printf '[postal-gateway:%s] ERROR: could not write %s\n' "${PG_STEP:-step}" "$PG_DATA_DIR/log/bootstrap.log" >&2
    if ((rc == 0)); then rc=1; fi
  fi
  rm -f "$PG_OUTPUT"
  exit "$rc"
}
trap 'pg_on_error "$LINENO"' ERR
trap pg_on_exit EXIT

# Reads the step's stdin (`<name> <base64>` lines) into files under $PG_PAYLOAD (mode 600),
# removed when the step exits. Secrets never touch the command line or the log.
pg_read_payload() {
  local name data
  umask 077
  PG_PAYLOAD=$(mktemp -d)
  while read -r name data; do
    [[ $name =~ ^[a-z_]+$ ]] || pg_fail "malformed stdin payload line"
    printf '%s' "$data" | base64 -d >"$PG_PAYLOAD/$name" || pg_fail "payload $name is not base64"
  done
  umask 022
}

pg_need() { [[ -s "$PG_PAYLOAD/$1" ]] || pg_fail "stdin payload lacks $1"; }

# pg_bytes <text>: PG_BYTES = its length in bytes (not characters).
pg_bytes() {
  local LC_ALL=C
  PG_BYTES=${#1}
}
# pg_install_text <mode> <owner> <dest> <text>: writes dest only when its content or mode differs;
# PG_RESULT=changed|unchanged. The new file is made in dest's directory, so it gets that
# directory's SELinux label (a file moved from /tmp keeps tmp's). Not for pipelines: the result
# and the temporary file's clean-up would stay in the pipeline's subshell. Text only (a shell
# string holds no NUL byte), compared in the shell: an unchanged file costs one `stat` (mode and
# size: the size catches what the shell's read cannot tell, a NUL byte at the end or a short read).
# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_install_text() {
  local mode=$1 owner=$2 dest=$PG_ROOT$3 old=()
  if [[ -f $dest ]]; then mapfile -d '' old <"$dest"; fi
  pg_bytes "$4"
  if ((${#old[@]} < 2)) && [[ -f $dest && ${old[0]-} == "$4" && $(stat -c '%a %s' "$dest") == "${mode#0} $PG_BYTES" ]]; then
    PG_RESULT=unchanged
    return 0
  fi
  if [[ ! -d ${dest%/*} ]]; then mkdir -p "${dest%/*}"; fi
  PG_PENDING=$(mktemp "$dest.XXXXXX")
  printf '%s' "$4" >"$PG_PENDING"
  chmod "$mode" "$PG_PENDING"
  chown "$owner" "$PG_PENDING"
  mv -f "$PG_PENDING" "$dest"
  PG_PENDING='' PG_RESULT=changed
  pg_log "wrote ${dest#"$PG_ROOT"}"
}
# pg_install <mode> <owner> <dest> < content: pg_install_text with the text on stdin. A file is read
# whole (its size is checked: the shell's read reports neither an I/O error nor a last NUL byte); a
# pipe carries the caller's own text.
pg_install() {
  local text=() size=
  if [[ -f /dev/stdin ]]; then
    size=$(stat -L -c %s /dev/stdin)
  elif [[ ! -p /dev/stdin ]]; then
    pg_fail "$3: pg_install reads a file or a pipe on stdin"
  fi
  mapfile -d '' text
  pg_bytes "${text[0]-}"
  ((${#text[@]} < 2)) || pg_fail "$3: binary content (a NUL byte), not installed"
  if [[ -n $size ]] && ((PG_BYTES != size)); then
    pg_fail "$3: read $PG_BYTES of its $size bytes (a NUL byte at the end, or a read error), not installed"
  fi
  pg_install_text "$1" "$2" "$3" "${text[0]-}"
}

# What a step last applied successfully, as a hash of the files it applied (kept in
# /var/lib/postal-gateway). Steps compare against it rather than against "written in this run",
# so a change that a failed run wrote to disk is still applied (restarted into) by the next run.
# pg_fingerprint <file…>: PG_FINGERPRINT = the sha256 of each file's name (a line) and content.
# shellcheck disable=SC2034  # PG_FINGERPRINT is for the caller
pg_fingerprint() {
  local file sum
  sum=$(for file in "$@"; do
    printf '%s\n' "$file"
    if [[ -f $PG_ROOT$file ]]; then cat "$PG_ROOT$file"; fi
  done | sha256sum)
  PG_FINGERPRINT=${sum%% *}
}
pg_applied() {
  local stamp=$PG_ROOT/var/lib/postal-gateway/$1.applied lines=()
  if [[ -f $stamp ]]; then mapfile -t lines <"$stamp"; fi
  [[ ${#lines[@]} == 1 && ${lines[0]} == "$2" ]]
}
# pg_mark_applied <key> <fingerprint>: records it for pg_applied (rewritten only when it differs: a
# stamp's mode does not matter, so an unchanged one costs no stat).
# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_mark_applied() {
  PG_RESULT=unchanged
  if pg_applied "$1" "$2"; then return 0; fi
  pg_install_text 0644 root:root "/var/lib/postal-gateway/$1.applied" "$2"$'\n'
}

# pg_install_units <key>: installs the systemd units in $PG_UNITS (one `<path> <base64>` line each,
# rendered by components/units.py) and reloads systemd when they differ from the set last marked
# applied under <key>. PG_RESULT=changed|unchanged; PG_UNITS_FINGERPRINT is what the caller marks
# applied once it has acted on the change (restarted what the new units schedule or watch).
# shellcheck disable=SC2034  # PG_RESULT and PG_UNITS_FINGERPRINT are for the caller
pg_install_units() {
  local path data padding unit=() paths=()
  while read -r path data; do
    [[ -n $path ]] || continue
    [[ $path =~ ^/etc/systemd/system/postal-gateway-[a-z-]+\.(service|timer|path)$ ]] || pg_fail "bad unit path $path"
    mapfile -d '' unit < <(base64 -d <<<"$data")
    wait "$!" # the decoding's exit status: bad base64 ends the step before anything is written
    pg_bytes "${unit[0]-}"
    # all of it, and no NUL byte (the shell's read drops a last one): base64 holds 3 bytes per 4 characters
    padding=${data##*[!=]}
    ((${#unit[@]} < 2 && PG_BYTES == ${#data} * 3 / 4 - ${#padding})) || pg_fail "unit $path is not text"
    pg_install_text 0644 root:root "$path" "${unit[0]-}"
    paths+=("$path")
  done <<<"${PG_UNITS:?}"
  pg_fingerprint "${paths[@]}"
  PG_UNITS_FINGERPRINT=$PG_FINGERPRINT
  PG_RESULT=unchanged
  if ! pg_applied "$1" "$PG_UNITS_FINGERPRINT"; then
    systemctl daemon-reload
    PG_RESULT=changed
  fi
}

# Installs the RPM packages that are missing, in one dnf transaction.
# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_dnf_install() {
  local missing=() pkg
  PG_RESULT=unchanged
  if rpm -q --quiet "$@"; then return 0; fi
  for pkg in "$@"; do
    if ! rpm -q --quiet "$pkg"; then missing+=("$pkg"); fi
  done
  if ((${#missing[@]})); then
    pg_log "installing ${missing[*]}"
    dnf -y -q install "${missing[@]}"
    PG_RESULT=changed
  fi
}

# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_enable_unit() {
  PG_RESULT=unchanged
  if ! systemctl is-enabled --quiet "$1"; then
    pg_log "enabling $1"
    systemctl enable "$1"
    PG_RESULT=changed
  fi
  if ! systemctl is-active --quiet "$1"; then
    pg_log "starting $1"
    systemctl start "$1"
    PG_RESULT=changed
  fi
}

# pg_spec <docker run option…>: a short hash of a container's settings, for pg_container.
pg_spec() {
  local sum
  sum=$(printf '%s\n' "$@" | sha256sum)
  printf '%s\n' "${sum:0:16}"
}

# pg_container <name> <image> <spec>: PG_RESULT=running|stopped|create. A container made from
# another image or another spec (a hash of its `docker run` options, kept in a label) is removed
# first (its data lives in bind mounts, so nothing is lost). Only "no such object" means absent:
# any other docker error fails the step.
# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_container() {
  local state image spec running
  if ! state=$(docker inspect --format \
    '{{.Config.Image}}|{{index .Config.Labels "postal-gateway.spec"}}|{{.State.Running}}' "$1" 2>&1); then
    [[ $state == *"No such object"* ]] || pg_fail "docker inspect $1: $state"
    state=
  fi
  IFS='|' read -r image spec running <<<"$state"
  if [[ -n $state && ($image != "$2" || $spec != "$3") ]]; then
    pg_log "replacing $1 ($image -> $2, new settings)"
    docker rm -f "$1" >/dev/null
    running=
  fi
  case $running in
    true) PG_RESULT=running ;;
    false) PG_RESULT=stopped ;;
    *) PG_RESULT=create ;;
  esac
}

# pg_wait_http <what> <url> [Host header]: waits up to 5 minutes (PG_WAIT_TRIES x 5 s) for a 2xx answer.
pg_wait_http() {
  local what=$1 url=$2 host=${3:-localhost} try
  for ((try = 0; try < ${PG_WAIT_TRIES:-60}; try++)); do
    if curl --silent --fail --output /dev/null --max-time 5 --header "Host: $host" "$url"; then return 0; fi
    sleep 5
  done
  pg_fail "$what did not answer $url in 5 minutes"
}

# pg_wait_health <service> <port> <name>: Postal's health servers answer `GET /` with
# "<name> (pid: …, host: …)" (app/util/health_server.rb). When another process holds the port,
# Postal only logs "already in use": whatever answers there instead fails the step by name.
pg_wait_health() {
  local body try
  for ((try = 0; try < ${PG_WAIT_TRIES:-60}; try++)); do
    if body=$(curl --silent --max-time 5 "http://127.0.0.1:$2/"); then
      if [[ $body == "$3 (pid: "* ]]; then return 0; fi
      pg_fail "127.0.0.1:$2 is held by a process that is not Postal's $1 service ($(ss -Hltnp "sport = :$2" | head -n 1));" \
        "stop it (e.g. cockpit.socket listens on 9090) so Postal's health server can listen there"
    fi
    sleep 5
  done
  pg_fail "Postal's $1 service did not answer http://127.0.0.1:$2/ in 5 minutes; see: postal logs $1"
}

pg_compose() { (cd "$PG_ROOT$PG_DATA_DIR/install" && docker compose -p postal "$@"); }
# pg_postal_running: PG_RESULT = Postal's running compose services, sorted, each followed by a space.
# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_postal_running() { PG_RESULT=$(pg_compose ps --services --status running | sort | tr '\n' ' '); }

# pg_dir <mode> <dir>: creates dir (and its parents) and sets its mode when it differs.
pg_dir() {
  if [[ ! -d $PG_ROOT$2 ]]; then mkdir -p "$PG_ROOT$2"; fi
  if [[ $(stat -c %a "$PG_ROOT$2") != "${1#0}" ]]; then chmod "$1" "$PG_ROOT$2"; fi
}
