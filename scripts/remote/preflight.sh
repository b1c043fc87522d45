#!/usr/bin/env bash
set -euo pipefail
# Asks the relay whether it accepts this VM (IP, HELO, envelope sender of each sending domain);
# never fails on its answer. PG_SENDERS: space-separated <domain>=<MAIL FROM> pairs.
: "${PG_HOSTNAME:?}" "${PG_RELAY_HOST:?}" "${PG_RELAY_PORT:?}" "${PG_RELAY_TLS:?}" "${PG_SENDERS:?}" \
  "${PG_RCPT_TO:?}" "${PG_PREFLIGHT_PY:?}"
read -r -a senders <<<"$PG_SENDERS"
echo "[postal-gateway:preflight] SMTP dialogue with ${PG_RELAY_HOST}:${PG_RELAY_PORT} (${PG_RELAY_TLS}) as ${PG_HOSTNAME}"
python3 -c "$PG_PREFLIGHT_PY" --timeout "${PG_PREFLIGHT_TIMEOUT:-20}" "$PG_RELAY_HOST" "$PG_RELAY_PORT" \
  "$PG_RELAY_TLS" "$PG_HOSTNAME" "$PG_RCPT_TO" "${senders[@]}"
