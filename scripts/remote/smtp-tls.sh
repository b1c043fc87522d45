#!/usr/bin/env bash
# smtp-tls: Postal's SMTP server offers STARTTLS with the web's certificate. Installs the renewal
# hook (postal-gateway-smtp-tls: a service run by a path unit when Caddy writes the certificate
# and by an hourly timer), waits for the certificate, runs the hook once and then starts Postal's
# smtp container, which the postal step holds back until its certificate is in place.
: "${PG_HOSTNAME:?}" "${PG_TLS:?}" "${PG_WEB_CERTS:?}" "${PG_WEB_KEYS:?}" "${PG_SMTP_TLS_HOOK:?}"
hook=/usr/local/sbin/postal-gateway-smtp-tls
unit=/etc/systemd/system/postal-gateway-smtp-tls
read -ra watched <<<"$PG_WEB_CERTS $PG_WEB_KEYS"
pg_dnf_install openssl

pg_install_text 0755 root:root "$hook" "$PG_SMTP_TLS_HOOK"
pg_install_text 0644 root:root /etc/postal-gateway/smtp-tls.env \
  "$(printf 'PG_STEP=smtp-tls\nPG_DATA_DIR=%s\nPG_WEB_CERTS="%s"\nPG_WEB_KEYS="%s"' "$PG_DATA_DIR" "$PG_WEB_CERTS" "$PG_WEB_KEYS")"$'\n'
pg_install 0644 root:root "$unit.service" <<EOT
[Unit]
Description=postal-gateway: give Postal's SMTP server the web's current certificate
After=docker.service

[Service]
Type=oneshot
EnvironmentFile=/etc/postal-gateway/smtp-tls.env
ExecStart=$hook
EOT
# systemd watches each path through its directory, so a certificate Caddy creates or renames
# into place later also triggers the service.
pg_install 0644 root:root "$unit.path" <<EOT
[Unit]
Description=postal-gateway: a renewed web certificate reaches Postal's SMTP server

[Path]
$(printf 'PathChanged=%s\n' "${watched[@]}")
Unit=postal-gateway-smtp-tls.service

[Install]
WantedBy=multi-user.target
EOT
pg_install 0644 root:root "$unit.timer" <<EOT
[Unit]
Description=postal-gateway: check hourly that Postal's SMTP server has the web's certificate

[Timer]
OnCalendar=hourly
RandomizedDelaySec=300
Unit=postal-gateway-smtp-tls.service

[Install]
WantedBy=timers.target
EOT
units=$(pg_fingerprint "$hook" /etc/postal-gateway/smtp-tls.env "$unit.service" "$unit.path" "$unit.timer")
if ! pg_applied smtp-tls-units "$units"; then
  systemctl daemon-reload
  if systemctl is-active --quiet postal-gateway-smtp-tls.path; then
    systemctl restart postal-gateway-smtp-tls.path  # watch the paths of the new mode
  fi
fi
pg_enable_unit postal-gateway-smtp-tls.path
pg_enable_unit postal-gateway-smtp-tls.timer
pg_mark_applied smtp-tls-units "$units"

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
for _ in $(seq 1 "${PG_WAIT_TRIES:-60}"); do
  "$PG_ROOT$hook"
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
