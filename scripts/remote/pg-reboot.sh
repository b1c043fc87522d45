#!/usr/bin/env bash
# postal-gateway-reboot (postal-gateway-reboot.timer, the maintenance window): reboots when an
# applied update needs it. Docker, MariaDB, Postal and Caddy come back by themselves.
# `needs-restarting -r` exits 1 both when a reboot is needed and on any dnf error (a held lock, a
# broken repository): dnf-plugins-core plugins/needs_restarting.py raises dnf.exceptions.Error
# after printing "Reboot is required to fully utilize these updates.", so that sentence (in the C
# locale) is what reboots; any other failure is reported and fails the unit.
set -euo pipefail
status=0
out=$(LC_ALL=C needs-restarting -r 2>&1) || status=$?
if ((status == 0)); then
  echo "no reboot needed"
elif ((status == 1)) && grep -q '^Reboot is required' <<<"$out"; then
  echo "an update needs a reboot: rebooting"
  printf '%s\n' "$out"
  systemctl reboot
else
  echo "postal-gateway-reboot: FAILED: needs-restarting -r exited $status without asking for a reboot:" >&2
  printf '%s\n' "$out" >&2
  exit 1
fi
