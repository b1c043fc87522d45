#!/usr/bin/env bash
# postal-gateway-smtp-tls, installed by the smtp-tls step (lib.sh + this file) and run by
# postal-gateway-smtp-tls.service whenever Caddy writes the web's certificate (path unit) and
# hourly (timer): copies the first valid certificate and key in PG_WEB_CERTS/PG_WEB_KEYS to
# Postal's SMTP server, and restarts only Postal's smtp container when they changed (Postal reads
# them once, app/lib/smtp_server/server.rb). Without a valid pair it changes nothing.
#
# The internet-facing Caddy writes the directories these files are in: each file is read once,
# never through a symbolic link, into a private directory, and only that copy is checked and
# installed (a file swapped between a check and a second read cannot reach Postal).
: "${PG_WEB_CERTS:?}" "${PG_WEB_KEYS:?}"
read -ra certs <<<"$PG_WEB_CERTS"
read -ra keys <<<"$PG_WEB_KEYS"
dest=$PG_DATA_DIR/config/smtp-tls
# the copies live where lib.sh's exit trap removes them (and withholds their lines from the log)
PG_PAYLOAD=$(umask 077 && mktemp -d)

# pg_copy_once <path> <copy>: PG_RESULT=copied|absent. Fails on a symbolic link anywhere on the
# path; `cp -P` opens the file itself with O_NOFOLLOW (GNU coreutils src/copy.c, copy_reg), so a
# link swapped in after the check is copied as a link, which is refused too.
# shellcheck disable=SC2034  # PG_RESULT is for the caller
pg_copy_once() {
  local part=$PG_ROOT name parts
  IFS=/ read -ra parts <<<"${1#/}"
  for name in "${parts[@]}"; do
    part+=/$name
    if [[ -L $part ]]; then
      pg_fail "refusing $1: ${part#"$PG_ROOT"} is a symbolic link (Caddy's storage holds regular files); nothing changed"
    fi
  done
  PG_RESULT=absent
  if [[ ! -e $PG_ROOT$1 ]]; then return 0; fi
  cp -P "$PG_ROOT$1" "$2"
  if [[ -L $2 || ! -f $2 ]]; then pg_fail "refusing $1: not a regular file; nothing changed"; fi
  PG_RESULT=copied
}

pick=
for i in "${!certs[@]}"; do
  cert=$PG_PAYLOAD/cert-$i.pem key=$PG_PAYLOAD/key-$i.pem
  pg_copy_once "${certs[$i]}" "$cert"
  if [[ $PG_RESULT != copied ]]; then continue; fi
  pg_copy_once "${keys[$i]}" "$key"
  if [[ $PG_RESULT != copied || ! -s $cert || ! -s $key ]]; then continue; fi
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

pg_install 0644 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$dest/cert.pem" <"$PG_PAYLOAD/cert-$pick.pem"
pg_install 0600 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$dest/key.pem" <"$PG_PAYLOAD/key-$pick.pem"
pg_fingerprint "$dest/cert.pem" "$dest/key.pem"
applied=$PG_FINGERPRINT
pg_postal_running
if ! pg_applied smtp-tls "$applied" && [[ " $PG_RESULT" == *" smtp "* ]]; then
  pg_log "restarting Postal's smtp container for the certificate from ${certs[$pick]}"
  pg_compose restart smtp
  pg_wait_health smtp 9091 smtp-server
fi
pg_mark_applied smtp-tls "$applied"
