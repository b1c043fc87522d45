#!/usr/bin/env bash
# caddy: the Caddyfile for the TLS mode and the postal-caddy container (host network) in
# front of Postal's web server on 127.0.0.1:5000; restarted when its files change.
: "${PG_CADDY_IMAGE:?}" "${PG_TLS:?}" "${PG_HOSTNAME:?}" "${PG_CADDYFILE:?}"
pg_read_payload
name=postal-caddy
config=$PG_DATA_DIR/config

printf '%s' "$PG_CADDYFILE" | pg_install 0644 root:root "$config/Caddyfile" || true
mkdir -p "$PG_ROOT$config/certs" "$PG_ROOT$PG_DATA_DIR/caddy-data"
if [[ $PG_TLS == custom ]]; then
  pg_need tls_certificate
  pg_need tls_private_key
  pg_install 0600 root:root "$config/certs/cert.pem" <"$PG_PAYLOAD/tls_certificate" || true
  pg_install 0600 root:root "$config/certs/key.pem" <"$PG_PAYLOAD/tls_private_key" || true
else
  for pem in cert.pem key.pem; do
    [[ ! -e $PG_ROOT$config/certs/$pem ]] || { rm -f "$PG_ROOT$config/certs/$pem"; pg_log "removed certs/$pem"; }
  done
fi

applied=$(pg_fingerprint "$config/Caddyfile" "$config/certs/cert.pem" "$config/certs/key.pem")
if pg_container_stale "$name" "$PG_CADDY_IMAGE"; then
  pg_log "starting $name ($PG_CADDY_IMAGE, tls $PG_TLS)"
  docker run --detach --name "$name" --restart unless-stopped --network host \
    --volume "$config/Caddyfile:/etc/caddy/Caddyfile:ro" --volume "$config/certs:/certs:ro" \
    --volume "$PG_DATA_DIR/caddy-data:/data" "$PG_CADDY_IMAGE" >/dev/null
elif ! pg_applied caddy "$applied" || ! pg_container_running "$name"; then
  pg_log "restarting $name (tls $PG_TLS)"
  docker restart "$name" >/dev/null
fi
pg_mark_applied caddy "$applied"
pg_log "done: https://$PG_HOSTNAME ($PG_TLS)"
