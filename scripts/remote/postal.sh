#!/usr/bin/env bash
# postal: Postal's install helper at a pinned commit, postal.yml and signing.key from Pulumi,
# `postal initialize` on a new host, `postal upgrade` when postalVersion changes, then start.
: "${PG_POSTAL_VERSION:?}" "${PG_INSTALL_REPO:?}" "${PG_INSTALL_COMMIT:?}" "${PG_HOSTNAME:?}"
pg_read_payload
pg_need postal_yml
pg_need signing_key
install_dir=$PG_ROOT$PG_DATA_DIR/install

# The version that initialize/upgrade last completed for, kept on the data disk (so a restored
# disk brings its own). Migrations only run forwards: a lower postalVersion is refused.
version_file=$PG_DATA_DIR/config/postal-gateway.version
current=
if [[ -f $PG_ROOT$version_file ]]; then current=$(<"$PG_ROOT$version_file"); fi
if [[ -n $current && $(printf '%s\n' "$current" "$PG_POSTAL_VERSION" | sort -V | head -n 1) != "$current" ]]; then
  pg_fail "postalVersion $PG_POSTAL_VERSION is lower than $current, which the data disk was initialised or" \
    "upgraded with; Postal's migrations do not run backwards: set postal-gateway:postalVersion to $current or later"
fi

if [[ ! -d $install_dir/.git ]]; then
  pg_log "cloning $PG_INSTALL_REPO"
  git clone --quiet "$PG_INSTALL_REPO" "$install_dir"
fi
if [[ $(git -C "$install_dir" rev-parse HEAD) != "$PG_INSTALL_COMMIT" ]]; then
  pg_log "install helper at $PG_INSTALL_COMMIT"
  git -C "$install_dir" fetch --quiet origin
  git -C "$install_dir" checkout --quiet --force "$PG_INSTALL_COMMIT"
fi
if [[ ! -L $PG_ROOT/usr/bin/postal || $(readlink "$PG_ROOT/usr/bin/postal") != "$PG_DATA_DIR/install/bin/postal" ]]; then
  ln -sfn "$PG_DATA_DIR/install/bin/postal" "$PG_ROOT/usr/bin/postal"
fi

pg_install 0640 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$PG_DATA_DIR/config/postal.yml" <"$PG_PAYLOAD/postal_yml"
pg_install 0640 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$PG_DATA_DIR/config/signing.key" <"$PG_PAYLOAD/signing_key"

compose_version=
if [[ -f $install_dir/docker-compose.yml ]]; then
  compose_version=$(sed -n 's#^ *image: ghcr.io/postalserver/postal:##p;T;q' "$install_dir/docker-compose.yml")
fi
if [[ $compose_version != "$PG_POSTAL_VERSION" ]]; then
  pg_log "docker-compose.yml for Postal $PG_POSTAL_VERSION"
  "$install_dir/bin/postal" set-version "$PG_POSTAL_VERSION" >/dev/null
fi
if [[ $current != "$PG_POSTAL_VERSION" ]]; then
  # A new host loads the schema; a new version migrates it.
  task=upgrade
  if [[ -z $current ]]; then task=initialize; fi
  pg_log "postal $task: ${current:-new host} -> $PG_POSTAL_VERSION"
  pg_compose pull --quiet
  pg_compose run --rm -T runner postal "$task"
  pg_install_text 0644 root:root "$version_file" "$PG_POSTAL_VERSION"$'\n'
fi

# Postal reads its configuration at start: recreate it unless it runs what is on disk now.
pg_fingerprint "$PG_DATA_DIR/config/postal.yml" "$PG_DATA_DIR/config/signing.key" \
  "$PG_DATA_DIR/install/docker-compose.yml"
applied=$PG_FINGERPRINT
# The SMTP server starts once the smtp-tls step has given it its certificate: with tls_enabled and
# no certificate it would offer STARTTLS and drop every client that takes it (smtp_server/server.rb).
services=(web worker)
if [[ -s $PG_ROOT$PG_DATA_DIR/config/smtp-tls/key.pem ]]; then services=(smtp web worker); fi
pg_postal_running
running=$PG_RESULT
if ! pg_applied postal "$applied"; then
  pg_log "starting Postal with the new configuration (${services[*]})"
  pg_compose up --detach --remove-orphans --force-recreate "${services[@]}"
elif [[ $running != "${services[*]} " ]]; then
  pg_log "starting Postal (running: ${running:-none})"
  pg_compose up --detach --remove-orphans "${services[@]}"
fi

# Puma only answers for web_hostname (Rails host authorization).
pg_wait_http "Postal's web server" http://127.0.0.1:5000/login "$PG_HOSTNAME"
pg_wait_health worker 9090 worker
if [[ ${services[0]} == smtp ]]; then pg_wait_health smtp 9091 smtp-server; fi
pg_mark_applied postal "$applied"
pg_log "done: Postal $PG_POSTAL_VERSION (${services[*]} healthy)"
