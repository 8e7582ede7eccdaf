#!/bin/sh
# Initialise an empty data directory once (like the official postgres image), then run the
# server as the unprivileged postgres user. Server settings come as `-c key=value` arguments.
set -eu

die() { echo "postgres-entrypoint: $*" >&2; exit 2; }

if [ "$(id -u)" = 0 ]; then
    # Read the secret as root (it belongs to the deployment, not to postgres), then drop.
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        [ -r "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not readable"
        POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
        export POSTGRES_PASSWORD
        unset POSTGRES_PASSWORD_FILE
    fi
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}

# A private server (unix socket only) for setting up roles; psql runs as the bootstrap superuser.
start_private() { pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null; }
stop_private() { pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null; }
sql() { PGOPTIONS="-c client_min_messages=warning" psql -v ON_ERROR_STOP=1 -q -X "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
    echo "postgres-entrypoint: creating database cluster in $PGDATA (user $user, database $db)"
    # The cluster's superuser is postgres, reachable only through the container's own socket;
    # the application's role owns its database and nothing more.
    initdb --username=postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    # Every host must authenticate with the password; only the container network reaches us.
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    start_private
    if [ "$user" != postgres ]; then
        sql -U postgres -v user="$user" -v pw="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'pw';
SQL
    else
        sql -U postgres -v pw="$POSTGRES_PASSWORD" -c "ALTER ROLE postgres PASSWORD :'pw'"
    fi
    [ "$db" = postgres ] || sql -U postgres -v user="$user" -v db="$db" <<'SQL'
CREATE DATABASE :"db" OWNER :"user";
SQL
    stop_private
fi

# Clusters made by earlier versions were bootstrapped by the application's role, which made it a
# superuser (able to run shell commands here: COPY ... TO PROGRAM). PostgreSQL can't demote its
# bootstrap role, so it is renamed postgres, and a new role of the old name, with the old password,
# takes over the database and everything in it.
# (Single-user mode: a quick look without starting the server.)
bootstrap=$(echo "SELECT rolname FROM pg_roles WHERE oid = 10" \
    | postgres --single -D "$PGDATA" template1 2>/dev/null \
    | sed -n 's/^[[:space:]]*1: rolname = "\([^"]*\)".*/\1/p')
if [ -n "$bootstrap" ] && [ "$bootstrap" != postgres ] && [ "$bootstrap" = "$user" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
    echo "postgres-entrypoint: role $user is the cluster's superuser; making postgres the superuser and $user the owner of $db"
    start_private
    # A helper superuser does the change (a session can't rename its own role), in one
    # transaction: a failure leaves the cluster as it was, and the next start tries again.
    sql -U "$user" -d template1 -c "DROP ROLE IF EXISTS sg_convert" -c "CREATE ROLE sg_convert SUPERUSER LOGIN"
    sql -U sg_convert -d "$db" -v user="$user" -v db="$db" -v pw="$POSTGRES_PASSWORD" <<'SQL'
BEGIN;
ALTER ROLE :"user" RENAME TO postgres;
-- The renamed superuser keeps its SCRAM password, which is Galaxy's: it must have none.
ALTER ROLE postgres PASSWORD NULL;
CREATE ROLE :"user" LOGIN PASSWORD :'pw';
ALTER DATABASE :"db" OWNER TO :"user";
SET sg.owner TO :'user';
DO $$
DECLARE
    owner text := current_setting('sg.owner');
    r record;
BEGIN
    -- Tables (their indexes and serial sequences follow), views, then what is left.
    FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = 10 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%' LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I',
            CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                           WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.name, owner);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = 10 AND c.relkind = 'S'
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO %I', r.name, owner);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proowner = 10 AND n.nspname NOT IN ('pg_catalog', 'information_schema') LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.name, owner);
    END LOOP;
    FOR r IN SELECT t.oid::regtype AS name FROM pg_type t
             JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typowner = 10 AND t.typtype IN ('e', 'd') AND t.typrelid = 0
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %I', r.name, owner);
    END LOOP;
    FOR r IN SELECT nspname FROM pg_namespace
             WHERE nspowner = 10 AND nspname NOT IN ('pg_catalog', 'information_schema', 'public')
               AND nspname NOT LIKE 'pg_%' LOOP
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, owner);
    END LOOP;
END $$;
COMMIT;
SQL
    sql -U postgres -d template1 -c "DROP ROLE sg_convert"
    stop_private
fi
unset POSTGRES_PASSWORD
exec "$@"
