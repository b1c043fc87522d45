#!/usr/bin/env bash
# caddy: the Caddyfile for the TLS mode and the postal-caddy container (host network) in front of
# Postal's web server on 127.0.0.1:5000. A new configuration is staged, validated by the same
# Caddy image, then switched to with a graceful reload; the step ends when https://$PG_HOSTNAME
# answers through Caddy on this VM.
: "${PG_CADDY_IMAGE:?}" "${PG_TLS:?}" "${PG_HOSTNAME:?}" "${PG_CADDYFILE:?}" "${PG_CADDY_ADMIN:?}"
pg_read_payload
name=postal-caddy
caddy=$PG_DATA_DIR/caddy # next/: staged; live/: mounted at /etc/caddy (certs at /certs)
data=$PG_DATA_DIR/caddy-data

# pg_caddy_files <dir> <Caddyfile> [<cert> <key>]: the Caddyfile and, for tls=custom, the
# certificate pair under <dir>.
pg_caddy_files() {
  pg_dir 0700 "$1/certs"
  pg_install 0644 root:root "$1/Caddyfile" <"$2"
  if [[ $PG_TLS == custom ]]; then
    pg_install 0600 root:root "$1/certs/cert.pem" <"$3"
    pg_install 0600 root:root "$1/certs/key.pem" <"$4"
  else
    rm -f "$PG_ROOT$1/certs/cert.pem" "$PG_ROOT$1/certs/key.pem"
  fi
}
mkdir -p "$PG_ROOT$data"
if [[ $PG_TLS == custom ]]; then
  pg_need tls_certificate
  pg_need tls_private_key
fi
pg_caddy_files "$caddy/next" <(printf '%s' "$PG_CADDYFILE") "$PG_PAYLOAD/tls_certificate" "$PG_PAYLOAD/tls_private_key"

# The running configuration stays until Caddy itself accepts the new one.
if ! verdict=$(docker run --rm --network none --volume "$caddy/next:/etc/caddy:ro" \
  --volume "$caddy/next/certs:/certs:ro" "$PG_CADDY_IMAGE" \
  caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile 2>&1); then
  pg_fail "Caddy rejects the new configuration (the running one is kept): $(sed '/"level":"info"/d' <<<"$verdict" | tail -n 5)"
fi
next=$PG_ROOT$caddy/next
pg_caddy_files "$caddy/live" "$next/Caddyfile" "$next/certs/cert.pem" "$next/certs/key.pem"

pg_fingerprint "$caddy/live/Caddyfile" "$caddy/live/certs/cert.pem" "$caddy/live/certs/key.pem"
applied=$PG_FINGERPRINT
# Caddy faces the Internet: no capability but binding 80/443, no privilege gained through exec, a
# read-only image. It writes only /data (certificates, ACME state: the data disk), /config (its
# autosaved config, XDG_CONFIG_HOME in the caddy image), /run (the admin socket) and /tmp.
run_options=(--restart unless-stopped --network host --volume "$caddy/live:/etc/caddy:ro"
  --volume "$caddy/live/certs:/certs:ro" --volume "$data:/data"
  --cap-drop ALL --cap-add NET_BIND_SERVICE --security-opt no-new-privileges --read-only
  --tmpfs /config --tmpfs /run --tmpfs /tmp)
spec=$(pg_spec "${run_options[@]}")
since=$(date +%s)
pg_container "$name" "$PG_CADDY_IMAGE" "$spec"
case $PG_RESULT in
  create)
    pg_log "starting $name ($PG_CADDY_IMAGE, tls $PG_TLS)"
    docker run --detach --name "$name" --label "postal-gateway.spec=$spec" "${run_options[@]}" \
      "$PG_CADDY_IMAGE" >/dev/null
    ;;
  stopped)
    pg_log "starting the stopped $name (tls $PG_TLS)"
    docker start "$name" >/dev/null
    ;;
  running)
    if ! pg_applied caddy "$applied"; then
      pg_log "reloading $name (tls $PG_TLS)"
      docker exec "$name" caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile \
        --address "$PG_CADDY_ADMIN" >/dev/null
    fi
    ;;
esac

# Caddy's files used to live in Postal's config directory (mounted into Postal's containers).
rm -rf "$PG_ROOT$PG_DATA_DIR/config/Caddyfile" "$PG_ROOT$PG_DATA_DIR/config/certs"

# https://$PG_HOSTNAME through Caddy on this VM, with the certificate the mode promises: a public
# one (letsencrypt), one from Caddy's internal CA (its root is in Caddy's data) or the given one.
ca=()
case $PG_TLS in
  internal) ca=(--cacert "$PG_ROOT$data/caddy/pki/authorities/local/root.crt") ;;
  custom) ca=(--cacert "$PG_ROOT$caddy/live/certs/cert.pem") ;;
esac
tries=${PG_CADDY_TRIES:-24} # x 5 s; Let's Encrypt gets 10 minutes for the ACME challenge
if [[ $PG_TLS == letsencrypt ]]; then tries=${PG_CADDY_TRIES:-120}; fi
[[ $tries =~ ^[0-9]+$ ]] || pg_fail "PG_CADDY_TRIES must be a whole number"
status=000
for ((try = 0; try < tries; try++)); do
  # Any HTTP status proves Caddy serves the name with that certificate (502 until Postal's web runs).
  if [[ $PG_TLS != internal || -f ${ca[1]} ]] &&
    status=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 "${ca[@]}" \
      --resolve "$PG_HOSTNAME:443:127.0.0.1" "https://$PG_HOSTNAME/login"); then
    break
  fi
  status=000
  sleep 5
done
if [[ $status == 000 ]]; then
  errors=$(docker logs --since "$since" "$name" 2>&1 | sed -n '/"level":"error"/p' | tail -n 3)
  hint=""
  if [[ $PG_TLS == letsencrypt ]]; then
    hint=" Let's Encrypt must reach http://$PG_HOSTNAME/.well-known/acme-challenge/ on this VM: the public A"
    hint+=" record of $PG_HOSTNAME must point here and port 80 must be open to the internet."
  fi
  pg_fail "https://$PG_HOSTNAME did not answer through Caddy in $((tries * 5)) s.$hint Caddy's errors: ${errors:-none}"
fi
pg_mark_applied caddy "$applied"
pg_log "done: https://$PG_HOSTNAME ($PG_TLS) answers through Caddy (HTTP $status)"
