#!/bin/bash
# Redis for Galaxy's Celery results: reads the results password (as root; the file is Galaxy's),
# hands it to the server in a config file only redis reads (not on its command line), runs as redis.
set -euo pipefail
secret=/var/lib/galaxy-results-secret/results_password
if [ ! -s "$secret" ]; then
    echo "redis-entrypoint: $secret is missing or empty: the init service creates it" >&2
    exit 2
fi
chown redis:redis /var/lib/redis
install -d -o redis -g redis -m 0700 /run/redis
install -o redis -g redis -m 0600 "$secret" /run/redis/password
{
    echo "include /etc/redis/redis.conf"
    echo "requirepass $(cat "$secret")"
} > /run/redis/redis.conf
chown redis:redis /run/redis/redis.conf
chmod 0600 /run/redis/redis.conf
exec setpriv --reuid=redis --regid=redis --init-groups redis-server /run/redis/redis.conf
