#!/usr/bin/env bash
# postal-gateway-smtp-tls, installed by the smtp-tls step (lib.sh + this file) and run by
# postal-gateway-smtp-tls.service whenever Caddy writes the web's certificate (path unit) and
# hourly (timer): copies the first valid certificate and key in PG_WEB_CERTS/PG_WEB_KEYS to
# Postal's SMTP server, and restarts only Postal's smtp container when they changed (Postal reads
# them once, app/lib/smtp_server/server.rb). Without a valid pair it changes nothing.
: "${PG_WEB_CERTS:?}" "${PG_WEB_KEYS:?}"
read -ra certs <<<"$PG_WEB_CERTS"
read -ra keys <<<"$PG_WEB_KEYS"
dest=$PG_DATA_DIR/config/smtp-tls

pick=
for i in "${!certs[@]}"; do
  cert=$PG_ROOT${certs[$i]} key=$PG_ROOT${keys[$i]}
  [[ -s $cert && -s $key ]] || continue
  if ! openssl x509 -noout -checkend 0 -in "$cert" >/dev/null 2>&1; then
    pg_log "skipping ${certs[$i]}: expired or unreadable"
    continue
  fi
  # Caddy writes the certificate before the key: a pair that does not match yet is skipped.
  cert_pub=$(openssl x509 -noout -pubkey -in "$cert" 2>/dev/null) || cert_pub=
  key_pub=$(openssl pkey -pubout -in "$key" 2>/dev/null) || key_pub=
  if [[ -z $cert_pub || $cert_pub != "$key_pub" ]]; then
    pg_log "skipping ${certs[$i]}: its key does not match (yet)"
    continue
  fi
  pick=$i
  break
done
if [[ -z $pick ]]; then
  pg_log "no valid certificate yet in ${PG_WEB_CERTS}"
  exit 0
fi

pg_install 0644 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$dest/cert.pem" <"$PG_ROOT${certs[$pick]}"
pg_install 0600 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$dest/key.pem" <"$PG_ROOT${keys[$pick]}"
applied=$(pg_fingerprint "$dest/cert.pem" "$dest/key.pem")
pg_postal_running
if ! pg_applied smtp-tls "$applied" && [[ " $PG_RESULT" == *" smtp "* ]]; then
  pg_log "restarting Postal's smtp container for the certificate from ${certs[$pick]}"
  pg_compose restart smtp
  pg_wait_health smtp 9091 smtp-server
fi
pg_mark_applied smtp-tls "$applied"
