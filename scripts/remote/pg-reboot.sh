#!/usr/bin/env bash
# postal-gateway-reboot (postal-gateway-reboot.timer, the maintenance window): reboots when an
# applied update needs it. Docker, MariaDB, Postal and Caddy come back by themselves.
set -euo pipefail
status=0
needs-restarting -r >/dev/null || status=$?
case $status in
  0) echo "no reboot needed" ;;
  1) echo "an update needs a reboot: rebooting"; systemctl reboot ;;
  *) echo "needs-restarting -r failed ($status)" >&2; exit "$status" ;;
esac
