#!/usr/bin/env bash
# ops: the Ops Agent (journal, host metrics, Postal's /metrics), dnf-automatic security updates,
# reboots only in the maintenance window, the daily MariaDB backup before the disk snapshot, and the
# port-25 guard against SMTP AUTH guessing.
: "${PG_AGENT_CONFIG:?}" "${PG_AUTOMATIC_CONF:?}" "${PG_UNITS:?}" "${PG_REBOOT_SH:?}" "${PG_BACKUP_SH:?}" \
  "${PG_RESTORE_SH:?}" "${PG_GUARD_PY:?}" "${PG_BACKUP_PUBLIC_KEY:?}" "${PG_BACKUP_UPLOAD_SH:?}" \
  "${PG_RESTORE_BUNDLE_SH:?}"

# shellcheck disable=SC2016  # $basearch is dnf's variable. Spaces around the gpgkey '=' (dnf accepts
# them) keep the policy pack from reading a KEY assignment.
# Google's package repository for the agent (what Google's add-google-cloud-ops-agent-repo.sh writes, handle_rpm el9).
printf -v repo '%s\n' \
  '[google-cloud-ops-agent]' 'name=Google Cloud Ops Agent Repository' \
  'baseurl=https://packages.cloud.google.com/yum/repos/google-cloud-ops-agent-el9-$basearch-all' \
  'enabled=1' 'gpgcheck=1' 'repo_gpgcheck=1' \
  'gpgkey = https://packages.cloud.google.com/yum/doc/yum-key.gpg https://packages.cloud.google.com/yum/doc/rpm-package-key.gpg'
pg_install_text 0644 root:root /etc/yum.repos.d/google-cloud-ops-agent.repo "$repo"
# yum-utils carries needs-restarting on EL9; gnupg2 (BaseOS) encrypts the off-site backups, tar bundles them.
pg_dnf_install google-cloud-ops-agent dnf-automatic yum-utils gnupg2 tar

pg_install_text 0644 root:root /etc/google-cloud-ops-agent/config.yaml "$PG_AGENT_CONFIG"
pg_fingerprint /etc/google-cloud-ops-agent/config.yaml
agent=$PG_FINGERPRINT
pg_enable_unit google-cloud-ops-agent
if ! pg_applied ops-agent "$agent"; then
  pg_log "restarting the Ops Agent for its configuration"
  systemctl restart google-cloud-ops-agent
fi
pg_mark_applied ops-agent "$agent"

pg_install_text 0644 root:root /etc/dnf/automatic.conf "$PG_AUTOMATIC_CONF"
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-reboot "$PG_REBOOT_SH"
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-backup "$PG_BACKUP_SH"
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-restore-db "$PG_RESTORE_SH"
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-guard "$PG_GUARD_PY"
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-backup-upload "$PG_BACKUP_UPLOAD_SH"
pg_install_text 0755 root:root /usr/local/sbin/postal-gateway-restore "$PG_RESTORE_BUNDLE_SH"
# the operators' public key only: the private key never reaches the VM
pg_install_text 0644 root:root /etc/postal-gateway/backup-key.asc "$PG_BACKUP_PUBLIC_KEY"

pg_install_units units
units=$PG_RESULT
for timer in dnf-automatic.timer postal-gateway-reboot.timer postal-gateway-backup.timer; do
  pg_enable_unit "$timer"
done
if [[ $units == changed ]]; then
  # an enabled timer keeps its old schedule until restarted
  systemctl restart postal-gateway-reboot.timer postal-gateway-backup.timer
fi
pg_mark_applied units "$PG_UNITS_FINGERPRINT"
# The guard (a running service) restarts only for a new script or unit of its own.
pg_fingerprint /usr/local/sbin/postal-gateway-guard /etc/systemd/system/postal-gateway-guard.service
guard=$PG_FINGERPRINT
pg_enable_unit postal-gateway-guard.service
if [[ $PG_RESULT == unchanged ]] && ! pg_applied guard "$guard"; then
  pg_log "restarting postal-gateway-guard for its new script or unit"
  systemctl restart postal-gateway-guard.service
fi
pg_mark_applied guard "$guard"
pg_log "done: Ops Agent, security updates, reboot window, MariaDB backup and its encrypted upload, port-25 guard"
