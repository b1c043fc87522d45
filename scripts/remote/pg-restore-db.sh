#!/usr/bin/env bash
# postal-gateway-restore-db [backup]: replaces MariaDB's data with a backup written by
# postal-gateway-backup (default: the newest). Postal and MariaDB are stopped meanwhile; the
# data directory it replaces is kept beside it as mariadb.before-restore-<time>.
set -euo pipefail
data=/opt/postal
root=${PG_ROOT:-}
dir=$data/backup/mariadb
backup=${1:-}
if [[ -z $backup && -d $root$dir ]]; then
  backup=$(find "$root$dir" -maxdepth 1 -name 'mariadb-*.mbstream.gz' -printf '%f\n' | sort | tail -n 1)
fi
[[ -n $backup ]] || {
  echo "no backup in $dir" >&2
  exit 1
}
backup=$dir/$(basename "$backup")
[[ -s $root$backup ]] || {
  echo "$backup does not exist" >&2
  exit 1
}
image=$(docker inspect --format '{{.Config.Image}}' postal-mariadb)
stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$data/mariadb.restore-$stamp

echo "stopping Postal and MariaDB"
(cd "$root$data/install" && docker compose -p postal stop)
docker stop postal-mariadb >/dev/null
mkdir -p "$root$work"
echo "unpacking $backup"
gzip -dc "$root$backup" | docker run --rm --interactive --volume "$work:/restore" --workdir /restore "$image" mbstream -x
echo "preparing it (applying its redo log)"
docker run --rm --volume "$work:/restore" "$image" mariadb-backup --prepare --target-dir=/restore
docker run --rm --volume "$work:/restore" "$image" chown -R mysql:mysql /restore
mv "$root$data/mariadb" "$root$data/mariadb.before-restore-$stamp"
mv "$root$work" "$root$data/mariadb"
docker start postal-mariadb >/dev/null
(cd "$root$data/install" && docker compose -p postal start)
echo "restored $backup; the previous data is in $data/mariadb.before-restore-$stamp"
