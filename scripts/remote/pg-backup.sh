#!/usr/bin/env bash
# postal-gateway-backup (postal-gateway-backup.timer, daily before the data disk snapshot): a hot,
# consistent physical backup of MariaDB (mariadb-backup inside its container, streamed as
# mbstream) onto the data disk, so every snapshot holds one. Keeps PG_BACKUP_RETENTION_DAYS days.
# A failure says why on stderr (the journal: `journalctl -u postal-gateway-backup`, Cloud Logging)
# and exits non-zero, leaving no file; mariadb-backup's own log is last-backup.log beside the backups.
set -euo pipefail
: "${PG_BACKUP_DIR:?}" "${PG_BACKUP_RETENTION_DAYS:?}" "${PG_MARIADB_CONTAINER:?}"
root=${PG_ROOT:-}
dir=$root$PG_BACKUP_DIR
log=$dir/last-backup.log
mkdir -p "$dir"
chmod 700 "$dir"
name=mariadb-$(date -u +%Y%m%dT%H%M%SZ).mbstream.gz
partial=$dir/.$name.partial
check=$PG_BACKUP_DIR/.check-$name
trap 'rm -rf "$partial" "$root$check"' EXIT

failed() {
  echo "postal-gateway-backup: FAILED: $1" >&2
  if [[ -s $log ]]; then
    echo "last lines of $PG_BACKUP_DIR/last-backup.log:" >&2
    tail -n 20 "$log" >&2
  fi
  exit 1
}

# The root password comes from the container's root-only mounted file; nothing secret on a command line.
# shellcheck disable=SC2016
if ! docker exec "$PG_MARIADB_CONTAINER" sh -c \
  'MYSQL_PWD=$(cat /run/secrets/mariadb-root-password) exec mariadb-backup --backup --user=root --stream=xbstream --target-dir=/tmp' \
  2>"$log" | gzip >"$partial"; then
  failed "mariadb-backup in $PG_MARIADB_CONTAINER did not complete (is MariaDB running? \`docker ps -a\`)"
fi

# A backup is only kept if its stream unpacks (mbstream -x, the tool a restore uses) and holds
# MariaDB's system tablespace, its accounts table and mariadb-backup's checkpoints file
# (https://mariadb.com/kb/en/mariabackup-overview/): a gzip of an empty or cut stream is not.
image=$(docker inspect --format '{{.Config.Image}}' "$PG_MARIADB_CONTAINER") ||
  failed "cannot read the image of $PG_MARIADB_CONTAINER"
mkdir -p "$root$check"
if ! gzip -dc "$partial" | docker run --rm --interactive --volume "$check:/restore" --workdir /restore "$image" mbstream -x; then
  failed "the backup stream does not unpack (mbstream -x)"
fi
missing=()
for file in ibdata1 mysql/global_priv.frm; do
  [[ -f $root$check/$file ]] || missing+=("$file")
done
[[ -f $root$check/mariadb_backup_checkpoints || -f $root$check/xtrabackup_checkpoints ]] ||
  missing+=("mariadb_backup_checkpoints")
((${#missing[@]} == 0)) || failed "the backup stream lacks ${missing[*]}: not a MariaDB backup"
rm -rf "$root$check"

mv "$partial" "$dir/$name"
echo "backup $PG_BACKUP_DIR/$name ($(stat -c %s "$dir/$name") bytes)"
find "$dir" -maxdepth 1 -name 'mariadb-*.mbstream.gz' -mtime "+$((PG_BACKUP_RETENTION_DAYS - 1))" -print -delete
