#!/usr/bin/env bash
# database: MariaDB in a container on 127.0.0.1:3306, data on the data disk, user `postal`
# with rights on `postal` and `postal-*` (one database per mail server).
: "${PG_MARIADB_IMAGE:?}"
pg_read_payload
pg_need db_root_password
pg_need db_password
name=postal-mariadb

if pg_container_stale "$name" "$PG_MARIADB_IMAGE"; then
  mkdir -p "$PG_ROOT$PG_DATA_DIR/mariadb"
  # The root password is read by MariaDB only when it initialises an empty data directory.
  printf 'MARIADB_ROOT_PASSWORD=%s\n' "$(cat "$PG_PAYLOAD/db_root_password")" >"$PG_PAYLOAD/mariadb.env"
  pg_log "starting $name ($PG_MARIADB_IMAGE)"
  docker run --detach --name "$name" --restart unless-stopped --network host \
    --env-file "$PG_PAYLOAD/mariadb.env" --volume "$PG_DATA_DIR/mariadb:/var/lib/mysql" \
    "$PG_MARIADB_IMAGE" --bind-address=127.0.0.1 --port=3306 --innodb-log-file-size=512M \
    --max-allowed-packet=128M --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci >/dev/null
elif ! pg_container_running "$name"; then
  pg_log "starting the stopped $name"
  docker start "$name" >/dev/null
fi

pg_log "waiting for MariaDB"
for _ in $(seq 1 60); do
  docker exec "$name" healthcheck.sh --connect >/dev/null 2>&1 && break
  sleep 2
done
docker exec "$name" healthcheck.sh --connect >/dev/null || pg_fail "MariaDB did not become ready; see: docker logs $name"

# Idempotent grants; the SQL (with the password) goes through stdin, the root password
# through the container's own environment, so neither shows in a process list.
db_password=$(cat "$PG_PAYLOAD/db_password")
sql_password=${db_password//\\/\\\\}
sql_password=${sql_password//\'/\\\'}
docker exec --interactive "$name" sh -c 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" exec mariadb --user=root' <<SQL
CREATE USER IF NOT EXISTS 'postal'@'127.0.0.1' IDENTIFIED BY '$sql_password';
ALTER USER 'postal'@'127.0.0.1' IDENTIFIED BY '$sql_password';
GRANT ALL PRIVILEGES ON \`postal\`.* TO 'postal'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`postal-%\`.* TO 'postal'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
pg_log "done: user postal on postal and postal-*"
