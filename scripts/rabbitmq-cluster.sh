#!/bin/bash
# A RabbitMQ cluster of three nodes on this machine, from the installed rabbitmq-server.
#
#   scripts/rabbitmq-cluster.sh start          start the nodes that are not running; form the cluster
#   scripts/rabbitmq-cluster.sh stop           stop every node (data kept: the next start is quick)
#   scripts/rabbitmq-cluster.sh status         each node, its ports, and the cluster's running members
#   scripts/rabbitmq-cluster.sh urls [VHOST]   the broker URL list for CELERY_BROKER_URL
#   scripts/rabbitmq-cluster.sh reset          stop, then remove the nodes' data and logs
#
# Each node has its own name (<name>-1@localhost, ...), AMQP port (CLUSTER_PORT_BASE, +1, +2),
# distribution port (AMQP + 20000), management port (AMQP + 10000), config file, data and log
# folders under CLUSTER_DIR. The nodes run as the rabbitmq user, so they share its Erlang cookie.
# The machine's own node (rabbit@localhost on 5672, configured by /etc/rabbitmq) is never touched:
# each node gets RABBITMQ_CONF_ENV_FILE and RABBITMQ_CONFIG_FILE of its own, so nothing of the
# system-wide configuration (which pins the listener to 5672) applies to it.
#
# The cluster forms by peer discovery from config (classic_config): the first node starts alone,
# each next one finds it in the list and joins. A restarted node rejoins by itself.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${CLUSTER_NAME:-ordering}
SIZE=${CLUSTER_SIZE:-3}
PORT_BASE=${CLUSTER_PORT_BASE:-5673}
DIR=${CLUSTER_DIR:-$ROOT/tmp/rabbitmq-cluster/$NAME}
START_TIMEOUT=${CLUSTER_START_TIMEOUT:-120}
RABBITMQ_USER=${RABBITMQ_USER:-rabbitmq}

die() { echo "rabbitmq-cluster: $*" >&2; exit 1; }

# The server scripts themselves, not the distribution's wrappers in /usr/sbin (which switch to the
# rabbitmq user on their own, but drop the environment that points each node to its files).
bin_dir() {
    local dir
    for dir in "${RABBITMQ_BIN:-}" /usr/lib/rabbitmq/bin /usr/local/lib/rabbitmq/bin; do
        [ -n "$dir" ] && [ -x "$dir/rabbitmq-server" ] && { echo "$dir"; return; }
    done
    dir=$(dirname "$(command -v rabbitmq-server 2>/dev/null)") || true
    [ -n "$dir" ] && [ -x "$dir/rabbitmqctl" ] && { echo "$dir"; return; }
    die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
}
BIN=$(bin_dir)
RABBITMQ_HOME=$(getent passwd "$RABBITMQ_USER" | cut -d: -f6) || die "no user $RABBITMQ_USER"

# Run a command as the rabbitmq user, whose home holds the Erlang cookie every node shares.
as_rabbitmq() {
    local env=(env HOME="$RABBITMQ_HOME" ERL_EPMD_ADDRESS=127.0.0.1 "$@")
    if [ "$(id -u)" = "$(id -u "$RABBITMQ_USER")" ]; then
        "${env[@]}"
    elif [ "$(id -u)" = 0 ]; then
        runuser -u "$RABBITMQ_USER" -- "${env[@]}"
    else
        die "run as root or as $RABBITMQ_USER (the nodes run as $RABBITMQ_USER, with its Erlang cookie)"
    fi
}

node_name() { echo "$NAME-$1@localhost"; }
amqp_port() { echo $((PORT_BASE + $1 - 1)); }
node_dir() { echo "$DIR/$1"; }

ctl() {  # ctl N command args...: rabbitmqctl against node N
    local n=$1
    shift
    as_rabbitmq RABBITMQ_CONF_ENV_FILE="$(node_dir "$n")/rabbitmq-env.conf" "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

running() { ctl "$1" -q ping >/dev/null 2>&1; }

write_config() {
    local n=$1 dir port i
    dir=$(node_dir "$n")
    port=$(amqp_port "$n")
    mkdir -p "$dir/mnesia" "$dir/log"
    {
        echo "# Node $n of the '$NAME' cluster (scripts/rabbitmq-cluster.sh); regenerated on every start."
        echo "listeners.tcp.default = 127.0.0.1:$port"
        echo "management.tcp.ip = 127.0.0.1"
        echo "management.tcp.port = $((port + 10000))"
        echo "cluster_formation.peer_discovery_backend = classic_config"
        for i in $(seq 1 "$SIZE"); do
            echo "cluster_formation.classic_config.nodes.$i = $(node_name "$i")"
        done
        echo "log.file.level = info"
        echo "log.console = false"
    } >"$dir/rabbitmq.conf"
    echo "[rabbitmq_management]." >"$dir/enabled_plugins"
    {
        echo "NODENAME=$(node_name "$n")"
        echo "NODE_PORT=$port"
        echo "DIST_PORT=$((port + 20000))"
        echo "CONFIG_FILE=$dir/rabbitmq.conf"
        echo "ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
        echo "MNESIA_BASE=$dir/mnesia"
        echo "LOG_BASE=$dir/log"
        # Distribution on loopback only; schedulers that do not spin while idle (the machine is shared).
        echo "SERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none\""
    } >"$dir/rabbitmq-env.conf"
    chown -R "$RABBITMQ_USER": "$dir"
}

start_node() {
    local n=$1 dir
    dir=$(node_dir "$n")
    if running "$n"; then
        echo "node $(node_name "$n") already running (AMQP 127.0.0.1:$(amqp_port "$n"))"
        return
    fi
    write_config "$n"
    as_rabbitmq RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" "$BIN/rabbitmq-server" -detached \
        >>"$dir/log/startup.log" 2>&1
    # await_startup fails at once while the node has not yet registered its name: ask again.
    local deadline=$((SECONDS + START_TIMEOUT))
    until ctl "$n" -q await_startup --timeout 10 >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$dir/log/startup.log" "$dir/log/$(node_name "$n").log" >&2 2>/dev/null || true
            die "node $(node_name "$n") did not start within ${START_TIMEOUT}s (logs in $dir/log)"
        fi
        sleep 1
    done
    echo "started $(node_name "$n"): AMQP 127.0.0.1:$(amqp_port "$n"), management http://127.0.0.1:$(($(amqp_port "$n") + 10000))/"
}

running_members() {
    local n
    for n in $(seq 1 "$SIZE"); do
        if running "$n"; then
            ctl "$n" -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null && return
        fi
    done
    echo 0
}

start() {
    local n members
    mkdir -p "$DIR"
    chown "$RABBITMQ_USER": "$DIR"
    # One after another: a node joins the cluster of the first node it finds running.
    for n in $(seq 1 "$SIZE"); do
        start_node "$n"
    done
    members=$(running_members)
    [ "$members" = "$SIZE" ] || die "the cluster has $members running nodes, not $SIZE (see '$0 status')"
    echo "cluster '$NAME' running: $SIZE nodes"
    echo "CELERY_BROKER_URL='$(urls /)'"
}

stop() {
    local n
    # The last node to stop is the first to start: it then waits for no peer.
    for n in $(seq "$SIZE" -1 1); do
        if running "$n"; then
            ctl "$n" -q shutdown >/dev/null
            echo "stopped $(node_name "$n")"
        else
            echo "node $(node_name "$n") not running"
        fi
    done
}

status() {
    local n state
    for n in $(seq 1 "$SIZE"); do
        state=stopped
        running "$n" && state=running
        echo "$(node_name "$n")  $state  AMQP 127.0.0.1:$(amqp_port "$n")  management :$(($(amqp_port "$n") + 10000))  dist :$(($(amqp_port "$n") + 20000))"
    done
    echo "running cluster members: $(running_members) of $SIZE"
}

urls() {
    local vhost=${1:-/} n list=()
    [ "$vhost" = / ] && vhost=""
    for n in $(seq 1 "$SIZE"); do
        list+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/$vhost")
    done
    (IFS=';'; echo "${list[*]}")
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    urls) urls "${2:-/}" ;;
    reset) stop; rm -rf "$DIR"; echo "removed $DIR" ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
