#!/usr/bin/env bash
# provision: admin user, organization, mail server, sending domains with the Pulumi DKIM
# keys, API and SMTP credentials, by provision.rb under `rails runner` (find or create).
# `compose run` hands the container no environment of ours: the DNS wait's settings go in with -e.
: "${PG_PROVISION_RB:?}"
pg_read_payload
pg_need provision_json
pg_install_text 0644 root:root "$PG_DATA_DIR/config/provision.rb" "$PG_PROVISION_RB"
pg_log "provisioning Postal"
pg_compose run --rm -T -e "PG_DNS_WAIT_SECONDS=${PG_DNS_WAIT_SECONDS:-600}" \
  -e "PG_DNS_CHECK_INTERVAL=${PG_DNS_CHECK_INTERVAL:-15}" \
  runner bundle exec rails runner /config/provision.rb <"$PG_PAYLOAD/provision_json"
pg_log "done"
