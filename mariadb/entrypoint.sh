#!/bin/sh
# Initialise an empty data directory once, with the user `slurm` (password from
# MARIADB_PASSWORD_FILE) owning the accounting database, then run the server as the
# unprivileged mysql user.
set -eu

die() { echo "mariadb-entrypoint: $*" >&2; exit 2; }
DATADIR=/var/lib/mysql
INIT_SOCKET=/run/mysqld/init.sock

if [ "$(id -u)" = 0 ]; then
    # Read the secret as root (it belongs to the deployment, not to mysql), then drop.
    [ -r "${MARIADB_PASSWORD_FILE:-}" ] || die "MARIADB_PASSWORD_FILE='${MARIADB_PASSWORD_FILE:-}' is not readable"
    MARIADB_PASSWORD=$(cat "$MARIADB_PASSWORD_FILE")
    export MARIADB_PASSWORD
    unset MARIADB_PASSWORD_FILE
    chown mysql:mysql "$DATADIR" /run/mysqld
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi

if [ ! -d "$DATADIR/mysql" ]; then
    echo "mariadb-entrypoint: creating the accounting database in $DATADIR"
    mariadb-install-db --datadir="$DATADIR" --skip-test-db --auth-root-socket-user=mysql >/dev/null
    # A private server (no network) just for setting up the user.
    mariadbd --datadir="$DATADIR" --skip-networking --socket="$INIT_SOCKET" &
    server=$!
    tries=0
    until mariadb -u mysql --socket="$INIT_SOCKET" -e "SELECT 1" >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || die "the new database did not start"
        sleep 1
    done
    mariadb -u mysql --socket="$INIT_SOCKET" <<SQL
CREATE USER 'slurm'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';
SQL
    kill "$server"
    wait "$server" || true
fi
unset MARIADB_PASSWORD
exec "$@"
