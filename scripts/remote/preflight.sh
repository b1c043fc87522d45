#!/usr/bin/env bash
set -euo pipefail
# Asks the relay whether it accepts this VM (IP, HELO, envelope sender); never fails on its answer.
: "${PG_HOSTNAME:?}" "${PG_RELAY_HOST:?}" "${PG_RELAY_PORT:?}" "${PG_RELAY_TLS:?}" "${PG_MAIL_FROM:?}" \
  "${PG_RCPT_TO:?}" "${PG_PREFLIGHT_PY:?}"
echo "[postal-gateway:preflight] SMTP dialogue with ${PG_RELAY_HOST}:${PG_RELAY_PORT} (${PG_RELAY_TLS}) as ${PG_HOSTNAME}"
python3 -c "$PG_PREFLIGHT_PY" "$PG_RELAY_HOST" "$PG_RELAY_PORT" "$PG_RELAY_TLS" "$PG_HOSTNAME" \
  "$PG_MAIL_FROM" "$PG_RCPT_TO"
