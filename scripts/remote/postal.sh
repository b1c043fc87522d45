#!/usr/bin/env bash
# postal: Postal's install helper at a pinned commit, postal.yml and signing.key from Pulumi,
# `postal initialize` on a new host, `postal upgrade` when postalVersion changes, then start.
: "${PG_POSTAL_VERSION:?}" "${PG_INSTALL_REPO:?}" "${PG_INSTALL_COMMIT:?}" "${PG_HOSTNAME:?}"
pg_read_payload
pg_need postal_yml
pg_need signing_key
install_dir=$PG_ROOT$PG_DATA_DIR/install

if [[ ! -d $install_dir/.git ]]; then
  pg_log "cloning $PG_INSTALL_REPO"
  git clone --quiet "$PG_INSTALL_REPO" "$install_dir"
fi
if [[ $(git -C "$install_dir" rev-parse HEAD) != "$PG_INSTALL_COMMIT" ]]; then
  pg_log "install helper at $PG_INSTALL_COMMIT"
  git -C "$install_dir" fetch --quiet origin
  git -C "$install_dir" checkout --quiet --force "$PG_INSTALL_COMMIT"
fi
if [[ $(readlink "$PG_ROOT/usr/bin/postal" || true) != "$PG_DATA_DIR/install/bin/postal" ]]; then
  ln -sfn "$PG_DATA_DIR/install/bin/postal" "$PG_ROOT/usr/bin/postal"
fi

pg_install 0640 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$PG_DATA_DIR/config/postal.yml" <"$PG_PAYLOAD/postal_yml" || true
pg_install 0640 "$PG_POSTAL_UID:$PG_POSTAL_UID" "$PG_DATA_DIR/config/signing.key" <"$PG_PAYLOAD/signing_key" || true

# The version that initialize/upgrade last completed for, kept on the data disk.
version_file=$PG_ROOT$PG_DATA_DIR/config/postal-gateway.version
current=$(cat "$version_file" 2>/dev/null || true)
compose_version=$(sed -n 's#^ *image: ghcr.io/postalserver/postal:##p;T;q' "$install_dir/docker-compose.yml" 2>/dev/null || true)
if [[ $compose_version != "$PG_POSTAL_VERSION" ]]; then
  pg_log "docker-compose.yml for Postal $PG_POSTAL_VERSION"
  "$install_dir/bin/postal" set-version "$PG_POSTAL_VERSION" >/dev/null
fi
if [[ $current != "$PG_POSTAL_VERSION" ]]; then
  # A new host loads the schema; a new version migrates it.
  task=$([[ -z $current ]] && echo initialize || echo upgrade)
  pg_log "postal $task: ${current:-new host} -> $PG_POSTAL_VERSION"
  pg_compose pull --quiet
  pg_compose run --rm -T runner postal "$task"
  echo "$PG_POSTAL_VERSION" >"$version_file"
fi

# Postal reads its configuration at start: recreate it unless it runs what is on disk now.
applied=$(pg_fingerprint "$PG_DATA_DIR/config/postal.yml" "$PG_DATA_DIR/config/signing.key" \
  "$PG_DATA_DIR/install/docker-compose.yml")
running=$(pg_compose ps --services --status running | sort | tr '\n' ' ')
if ! pg_applied postal "$applied"; then
  pg_log "starting Postal with the new configuration"
  pg_compose up --detach --remove-orphans --force-recreate
elif [[ $running != "smtp web worker " ]]; then
  pg_log "starting Postal (running: ${running:-none})"
  pg_compose up --detach --remove-orphans
fi
# Puma only answers for web_hostname (Rails host authorization); worker and SMTP server have /health.
pg_wait_http "Postal's web server" http://127.0.0.1:5000/login "$PG_HOSTNAME"
pg_wait_http "Postal's worker" http://127.0.0.1:9090/health
pg_wait_http "Postal's SMTP server" http://127.0.0.1:9091/health
pg_mark_applied postal "$applied"
pg_log "done: Postal $PG_POSTAL_VERSION (web, worker and SMTP server healthy)"
