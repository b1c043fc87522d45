#!/usr/bin/env bash
# database: MariaDB in a container on 127.0.0.1:3306, data on the data disk, user `postal`
# with rights on `postal` and `postal-*` (one database per mail server).
: "${PG_MARIADB_IMAGE:?}"
pg_read_payload
pg_need db_root_password
pg_need db_password
name=postal-mariadb

# The root password lives in a root-only file on the data disk, mounted read-only: the image reads
# it through MARIADB_ROOT_PASSWORD_FILE (as root, before dropping to mysql), so it is in neither
# `docker inspect` nor a command line. MariaDB uses it only to initialise an empty data directory.
secrets=$PG_DATA_DIR/secrets
pg_dir 0700 "$secrets"
pg_install 0600 root:root "$secrets/mariadb-root-password" <"$PG_PAYLOAD/db_root_password"
run_options=(--restart unless-stopped --network host --volume "$PG_DATA_DIR/mariadb:/var/lib/mysql"
  --volume "$secrets/mariadb-root-password:/run/secrets/mariadb-root-password:ro"
  --env MARIADB_ROOT_PASSWORD_FILE=/run/secrets/mariadb-root-password)
server_options=(--bind-address=127.0.0.1 --port=3306 --innodb-log-file-size=512M --max-allowed-packet=128M
  --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci)
spec=$(pg_spec "${run_options[@]}" "${server_options[@]}")

pg_container "$name" "$PG_MARIADB_IMAGE" "$spec"
case $PG_RESULT in
  create)
    mkdir -p "$PG_ROOT$PG_DATA_DIR/mariadb"
    pg_log "starting $name ($PG_MARIADB_IMAGE)"
    docker run --detach --name "$name" --label "postal-gateway.spec=$spec" "${run_options[@]}" \
      "$PG_MARIADB_IMAGE" "${server_options[@]}" >/dev/null
    ;;
  stopped)
    pg_log "starting the stopped $name"
    docker start "$name" >/dev/null
    ;;
esac

pg_log "waiting for MariaDB"
ready=0
for ((try = 0; try < 60; try++)); do
  if docker exec "$name" healthcheck.sh --connect >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 2
done
((ready)) || pg_fail "MariaDB did not become ready; see: docker logs $name"

# Idempotent grants; the SQL (with the password) goes through stdin, the root password from the
# mounted file into the client's environment, so neither shows in a process list.
db_password=$(<"$PG_PAYLOAD/db_password")
sql_password=${db_password//\\/\\\\}
sql_password=${sql_password//\'/\\\'}
docker exec --interactive "$name" sh -c 'MYSQL_PWD=$(cat /run/secrets/mariadb-root-password) exec mariadb --user=root' <<SQL
CREATE USER IF NOT EXISTS 'postal'@'127.0.0.1' IDENTIFIED BY '$sql_password';
ALTER USER 'postal'@'127.0.0.1' IDENTIFIED BY '$sql_password';
GRANT ALL PRIVILEGES ON \`postal\`.* TO 'postal'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`postal-%\`.* TO 'postal'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
pg_log "done: user postal on postal and postal-*"
