#!/usr/bin/env bash
# postal-gateway-backup (postal-gateway-backup.timer, daily before the data disk snapshot): a hot,
# consistent physical backup of MariaDB (mariadb-backup inside its container, streamed as
# mbstream) onto the data disk, so every snapshot holds one. Keeps PG_BACKUP_RETENTION_DAYS days.
set -euo pipefail
: "${PG_BACKUP_DIR:?}" "${PG_BACKUP_RETENTION_DAYS:?}" "${PG_MARIADB_CONTAINER:?}"
dir=${PG_ROOT:-}$PG_BACKUP_DIR
mkdir -p "$dir"
chmod 700 "$dir"
name=mariadb-$(date -u +%Y%m%dT%H%M%SZ).mbstream.gz
partial=$dir/.$name.partial
trap 'rm -f "$partial"' EXIT
# The root password comes from the container's root-only mounted file; nothing secret on a command line.
# shellcheck disable=SC2016
docker exec "$PG_MARIADB_CONTAINER" sh -c \
  'MYSQL_PWD=$(cat /run/secrets/mariadb-root-password) exec mariadb-backup --backup --user=root --stream=xbstream --target-dir=/tmp' \
  2>"$dir/last-backup.log" | gzip >"$partial"
[[ -s $partial ]] || { echo "mariadb-backup wrote nothing; see $dir/last-backup.log" >&2; exit 1; }
mv "$partial" "$dir/$name"
echo "backup $PG_BACKUP_DIR/$name ($(stat -c %s "$dir/$name") bytes)"
find "$dir" -maxdepth 1 -name 'mariadb-*.mbstream.gz' -mtime "+$((PG_BACKUP_RETENTION_DAYS - 1))" -print -delete
