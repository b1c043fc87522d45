#!/usr/bin/env bash
# smtp-tls: Postal's SMTP server offers STARTTLS with the web's certificate. Installs the renewal
# hook (postal-gateway-smtp-tls: a service run by a path unit when Caddy writes the certificate
# and by an hourly timer), waits for the certificate, runs the hook once and then starts Postal's
# smtp container, which the postal step holds back until its certificate is in place.
: "${PG_HOSTNAME:?}" "${PG_TLS:?}" "${PG_WEB_CERTS:?}" "${PG_WEB_KEYS:?}" "${PG_SMTP_TLS_HOOK:?}" "${PG_UNITS:?}"
pg_dnf_install openssl

# The hook and its units (components/units.py): a path unit runs it when Caddy writes the
# certificate, a timer hourly.
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-smtp-tls "$PG_SMTP_TLS_HOOK"
# the sandboxed service may write only these (components/units.py smtp_tls_writes): they must exist
pg_dir 0755 "$PG_DATA_DIR/config/smtp-tls"
pg_dir 0755 /var/lib/postal-gateway
pg_dir 0700 "$PG_DATA_DIR/log"
pg_install_units smtp-tls-units
if [[ $PG_RESULT == changed ]] && systemctl is-active --quiet postal-gateway-smtp-tls.path; then
  systemctl restart postal-gateway-smtp-tls.path # watch the paths of the new mode
fi
pg_enable_unit postal-gateway-smtp-tls.path
pg_enable_unit postal-gateway-smtp-tls.timer
pg_mark_applied smtp-tls-units "$PG_UNITS_FINGERPRINT"

# Caddy obtains (or, for tls=custom, has) the certificate in the background: wait until Postal
# has one of this mode's certificates (not one left from another mode).
read -ra certs <<<"$PG_WEB_CERTS"
installed=$PG_ROOT$PG_DATA_DIR/config/smtp-tls/cert.pem
has_current() {
  local cert
  for cert in "${certs[@]}"; do
    if cmp -s "$PG_ROOT$cert" "$installed"; then return 0; fi
  done
  return 1
}
for ((try = 0; try < ${PG_WAIT_TRIES:-60}; try++)); do
  "$PG_ROOT/usr/local/sbin/postal-gateway-smtp-tls"
  if has_current; then break; fi
  sleep 5
done
has_current || pg_fail "no certificate for $PG_HOSTNAME (tls $PG_TLS) in 5 minutes at $PG_WEB_CERTS;" \
  "see sudo docker logs postal-caddy (Let's Encrypt needs port 80 from the Internet and the A record)"

pg_postal_running
if [[ " $PG_RESULT" != *" smtp "* ]]; then
  pg_log "starting Postal's smtp container"
  pg_compose up --detach smtp
fi
pg_wait_health smtp 9091 smtp-server
pg_log "done: STARTTLS on port 25 with the certificate of $PG_HOSTNAME ($PG_TLS)"
