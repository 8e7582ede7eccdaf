#!/bin/bash
# RabbitMQ for Galaxy: reads the broker password (as root; the file is Galaxy's), runs the server
# as rabbitmq, and on every start makes sure of Galaxy's virtual host, user, password and the
# policy that drops the control queue of a Galaxy process that is gone (each process declares its
# own, named after its container; a re-created container would leave the old one filling up).
set -euo pipefail
secret=/var/lib/galaxy-broker-secret/broker_password
if [ ! -s "$secret" ]; then
    echo "rabbitmq-entrypoint: $secret is missing or empty: the init service creates it" >&2
    exit 2
fi
password=$(cat "$secret")
as_rabbitmq() { setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"; }
export HOME=/var/lib/rabbitmq RABBITMQ_PID_FILE=/run/rabbitmq/pid
chown rabbitmq:rabbitmq /var/lib/rabbitmq
install -d -o rabbitmq -g rabbitmq /run/rabbitmq
rm -f /run/rabbitmq/galaxy-ready "$RABBITMQ_PID_FILE"

as_rabbitmq rabbitmq-server &
server=$!
trap 'kill -TERM "$server"; wait "$server"' TERM INT
# Until the server has written its pid file and finished booting.
as_rabbitmq rabbitmqctl -q wait "$RABBITMQ_PID_FILE" --timeout 120
if ! as_rabbitmq rabbitmqctl -q list_vhosts | grep -qx galaxy; then
    as_rabbitmq rabbitmqctl -q add_vhost galaxy
fi
if as_rabbitmq rabbitmqctl -q list_users | grep -q '^galaxy\b'; then
    as_rabbitmq rabbitmqctl -q change_password galaxy <<<"$password"
else
    as_rabbitmq rabbitmqctl -q add_user galaxy <<<"$password"
fi
as_rabbitmq rabbitmqctl -q set_permissions -p galaxy galaxy '.*' '.*' '.*'
# 10 minutes without a consumer: a restarted process is back long before that.
as_rabbitmq rabbitmqctl -q set_policy -p galaxy --apply-to queues control-queues-expire \
    '^control\.' '{"expires": 600000}'
touch /run/rabbitmq/galaxy-ready
echo "rabbitmq-entrypoint: ready for Galaxy (virtual host galaxy, user galaxy)" >&2
wait "$server"
