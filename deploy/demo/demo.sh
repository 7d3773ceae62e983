#!/usr/bin/env bash
# walkeeper read-scaling demo: one primary, `walkeeper stream` into a local
# repository, a base backup, two read replicas seeded from the repository with
# `walkeeper restore --as-replica`, one `walkeeper health` agent per node and
# HAProxy with a write port and a read port. Everything listens on 127.0.0.1;
# all state lives under $DEMO_DIR (default /tmp/walkeeper-demo).
#
#   deploy/demo/demo.sh up            start it all (make demo)
#   deploy/demo/demo.sh add-replica   seed one more replica from the repository (make demo-replica)
#   deploy/demo/demo.sh writes [N]    N writes through the write port, showing who took them
#   deploy/demo/demo.sh reads [N]     N reads through the read port, showing who answered
#   deploy/demo/demo.sh down          stop everything, keep $DEMO_DIR (make demo-stop)
#
# No Docker. Run as root on a fresh Debian machine, it installs PostgreSQL 15
# and HAProxy from Debian when they are missing and runs PostgreSQL and
# walkeeper as the postgres OS user. This is a demo: the servers trust
# connections from 127.0.0.1 without a password. Do not copy its pg_hba.conf.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
DEMO_DIR="${DEMO_DIR:-/tmp/walkeeper-demo}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
BASE_PORT="${DEMO_BASE_PORT:-55430}"
PRIMARY_PORT=$((BASE_PORT + 2))     # 55432
WRITE_PORT=$((BASE_PORT + 10))      # 55440 HAProxy: writes -> primary
READ_PORT=$((BASE_PORT + 11))       # 55441 HAProxy: reads -> replicas
STATS_PORT=$((BASE_PORT + 12))      # 55442 HAProxy stats page
MAX_REPLICAS=3                      # HAProxy knows this many; add-replica fills the next one
SLOT=demo_stream
WK="$DEMO_DIR/bin/walkeeper"
REPO="$DEMO_DIR/repo"

pg_port() { echo $((PRIMARY_PORT + $1)); }        # node 0 = primary, 1.. = replicas
check_port() { echo $((BASE_PORT + 20 + $1)); }   # health agent of node N
node_name() { if [ "$1" = 0 ]; then echo primary; else echo "replica$1"; fi; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

# as_pg runs a command as the postgres OS user when we are root.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

install_missing() {
	local pkgs=()
	[ -x "$PGBIN/postgres" ] && [ -x "$PGBIN/psql" ] || pkgs+=(postgresql-15 postgresql-client-15)
	command -v haproxy >/dev/null 2>&1 || pkgs+=(haproxy)
	[ ${#pkgs[@]} -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}: install them (apt-get install ${pkgs[*]}) or run the demo as root"
	say "installing ${pkgs[*]} from Debian"
	mkdir -p /etc/postgresql-common
	[ -f /etc/postgresql-common/createcluster.conf ] || echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${pkgs[@]}"
	# The package may start its own HAProxy on port 80; the demo runs its own.
	command -v systemctl >/dev/null 2>&1 && systemctl stop haproxy >/dev/null 2>&1 || true
	if [ "$(id -u)" = 0 ]; then id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql --shell /bin/bash postgres; fi
}

build() {
	say "building walkeeper"
	mkdir -p "$DEMO_DIR/bin"
	(cd "$top" && go build -o "$DEMO_DIR/bin/walkeeper" ./cmd/walkeeper)
	chmod 755 "$DEMO_DIR/bin/walkeeper"
}

# start_bg NAME CMD... runs CMD in the background as postgres, logging to
# logs/NAME.log, with its pid in run/NAME.pid.
start_bg() {
	local name=$1
	shift
	as_pg bash -c 'nohup setsid "$@" >>"'"$DEMO_DIR/logs/$name.log"'" 2>&1 </dev/null & echo $! >"'"$DEMO_DIR/run/$name.pid"'"' _ "$@"
}

stop_bg() {
	local f="$DEMO_DIR/run/$1.pid"
	[ -f "$f" ] || return 0
	local pid
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	fi
	rm -f "$f"
}

psql_at() { # port sql...
	local port=$1
	shift
	"$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$*"
}

# psql_through WHAT PORT SQL runs SQL through an HAProxy port, retrying for
# up to 10 s as a client would: on a loaded machine a health check can time
# out twice in a row, HAProxy then marks the server down and closes or
# refuses its connections until two checks pass again (rise 2, inter 1s).
# A write retried after its connection closed may have committed already:
# the demo's statements tolerate that (IF NOT EXISTS; a repeated INSERT
# only adds a row).
psql_through() {
	local what=$1 port=$2 sql=$3 try
	for try in $(seq 1 10); do
		psql_at "$port" "$sql" && return 0
		[ "$try" = 10 ] && die "$what failed ten times through port $port (logs in $DEMO_DIR/logs)"
		echo "$what: the connection through port $port failed; retrying"
		sleep 1
	done
}

wait_for() { # description, seconds, command...
	local what=$1 secs=$2
	shift 2
	for _ in $(seq 1 $((secs * 5))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	die "timed out after ${secs}s waiting for $what (logs in $DEMO_DIR/logs)"
}

# haproxy_up BACKEND prints the servers HAProxy has marked UP in BACKEND,
# from its stats CSV (bash's /dev/tcp: no curl needed).
haproxy_up() {
	local be=$1
	exec 3<>"/dev/tcp/127.0.0.1/$STATS_PORT" || return 1
	printf 'GET /;csv HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
	awk -F, -v be="$be" '$1 == be && $2 != "BACKEND" && $18 == "UP" { print $2 }' <&3
	exec 3<&-
}

# only_up BACKEND SERVER...: exactly these servers are UP in BACKEND. Until
# its first checks HAProxy 2.6 counts every server as up (init-state arrived
# in 3.1), so right after start a write could reach a replica, and a read
# replica3, which does not exist yet.
only_up() {
	local be=$1
	shift
	[ "$(haproxy_up "$be" | tr '\n' ' ')" = "$* " ]
}

start_health() { # node
	local n=$1
	start_bg "health-$(node_name "$n")" "$WK" health --listen "127.0.0.1:$(check_port "$n")" \
		--dsn "host=127.0.0.1 port=$(pg_port "$n") user=postgres dbname=postgres" --log-format text
}

up() {
	[ -e "$DEMO_DIR/run/up" ] && die "a demo is already running in $DEMO_DIR: run 'make demo-stop' first"
	[ -d "$DEMO_DIR/primary" ] && die "$DEMO_DIR holds an earlier demo: remove it (rm -rf $DEMO_DIR) or set DEMO_DIR"
	install_missing
	mkdir -p "$DEMO_DIR"/{logs,run}
	build
	[ "$(id -u)" = 0 ] && chown -R postgres: "$DEMO_DIR"
	chmod 755 "$DEMO_DIR"

	say "starting the primary on 127.0.0.1:$PRIMARY_PORT"
	as_pg "$PGBIN/initdb" -D "$DEMO_DIR/primary" -U postgres --data-checksums --auth=trust >"$DEMO_DIR/logs/initdb.log"
	cat >>"$DEMO_DIR/primary/postgresql.conf" <<-EOF
		# walkeeper demo
		listen_addresses = '127.0.0.1'
		port = $PRIMARY_PORT
		unix_socket_directories = '$DEMO_DIR/run'
		max_wal_size = '256MB'
		hot_standby_feedback = on
	EOF
	cat >"$DEMO_DIR/primary/pg_hba.conf" <<-EOF
		# demo only: trust on loopback
		local all all trust
		host all all 127.0.0.1/32 trust
		host replication all 127.0.0.1/32 trust
	EOF
	as_pg "$PGBIN/pg_ctl" -D "$DEMO_DIR/primary" -l "$DEMO_DIR/logs/primary.log" -w start >/dev/null
	echo "$PGBIN/pg_ctl -D $DEMO_DIR/primary" >"$DEMO_DIR/run/up"
	psql_at "$PRIMARY_PORT" "CREATE ROLE walkeeper LOGIN REPLICATION"

	say "walkeeper stream: WAL from slot $SLOT into $REPO"
	start_bg stream "$WK" stream --repo "$REPO" --dsn "host=127.0.0.1 port=$PRIMARY_PORT user=walkeeper dbname=postgres" \
		--slot "$SLOT" --log-format text
	wait_for "the stream to become active" 60 sh -c "test -n \"\$('$PGBIN/psql' -X -At -h 127.0.0.1 -p $PRIMARY_PORT -U postgres -d postgres -c \"SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT' AND active\")\""

	say "some data: pgbench -i -s 5"
	as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -i -s 5 -q postgres 2>&1 | tail -1

	say "walkeeper backup"
	local id
	id=$(as_pg "$WK" backup --repo "$REPO" --dsn "host=127.0.0.1 port=$PRIMARY_PORT user=walkeeper dbname=postgres" --log-format text 2>>"$DEMO_DIR/logs/backup.log")
	echo "backup $id"
	as_pg "$WK" list --repo "$REPO"

	for n in 1 2; do add_replica_n "$n"; done

	say "health agents and HAProxy (write port $WRITE_PORT, read port $READ_PORT)"
	for n in $(seq 0 "$MAX_REPLICAS"); do
		[ -d "$DEMO_DIR/$(node_name "$n")" ] && start_health "$n"
	done
	local nodes=()
	for n in $(seq 0 "$MAX_REPLICAS"); do
		nodes+=(--node "$(node_name "$n")=127.0.0.1:$(pg_port "$n"),check=127.0.0.1:$(check_port "$n")")
	done
	"$WK" haproxy-config "${nodes[@]}" --bind 127.0.0.1 --write-port "$WRITE_PORT" --read-port "$READ_PORT" \
		--stats-port "$STATS_PORT" --max-lag 16MB --check-interval 1s >"$DEMO_DIR/haproxy.cfg"
	haproxy -c -q -f "$DEMO_DIR/haproxy.cfg"
	haproxy -D -f "$DEMO_DIR/haproxy.cfg" -p "$DEMO_DIR/run/haproxy.pid"
	wait_for "HAProxy to send writes to the primary only" 60 only_up pg_primary primary
	wait_for "HAProxy to send reads to the two replicas only" 60 only_up pg_replicas replica1 replica2

	writes 3
	reads 6

	say "walkeeper status"
	as_pg "$WK" status --repo "$REPO" --dsn "host=127.0.0.1 port=$PRIMARY_PORT user=postgres dbname=postgres" --slot "$SLOT" || true

	cat <<-EOF

		The demo runs in $DEMO_DIR (logs in $DEMO_DIR/logs):
		  write port   psql -h 127.0.0.1 -p $WRITE_PORT -U postgres
		  read port    psql -h 127.0.0.1 -p $READ_PORT -U postgres
		  HAProxy      http://127.0.0.1:$STATS_PORT/
		  health       curl -s http://127.0.0.1:$(check_port 1)/replica   (one agent per node, ports $(check_port 0)-$(check_port "$MAX_REPLICAS"))
		Add a replica from the repository:   make demo-replica
		Reads through the read port:         make demo-reads
		Stop everything:                     make demo-stop   (then rm -rf $DEMO_DIR)
	EOF
}

# add_replica_n seeds replica N from the repository (the primary only lends
# its slot) and starts it.
add_replica_n() {
	local n=$1 name dir port
	name=$(node_name "$n")
	dir="$DEMO_DIR/$name"
	port=$(pg_port "$n")
	say "$name: walkeeper restore --as-replica (port $port)"
	as_pg "$WK" restore --repo "$REPO" --target-dir "$dir" --as-replica \
		--dsn "host=127.0.0.1 port=$PRIMARY_PORT user=walkeeper dbname=postgres" \
		--slot "$name" --port "$port" --log-format text 2>>"$DEMO_DIR/logs/restore-$name.log" >/dev/null
	as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$DEMO_DIR/logs/$name.log" -w -t 300 start >/dev/null
	echo "$PGBIN/pg_ctl -D $dir" >>"$DEMO_DIR/run/up"
	wait_for "$name to stream from the primary" 120 sh -c "'$PGBIN/psql' -X -At -h 127.0.0.1 -p $port -U postgres -d postgres -c \"SELECT status FROM pg_stat_wal_receiver\" | grep -q streaming"
	echo "$name is streaming from the primary"
}

add_replica() {
	[ -e "$DEMO_DIR/run/up" ] || die "no demo is running: make demo"
	local n
	for n in $(seq 1 "$MAX_REPLICAS"); do
		if [ ! -d "$DEMO_DIR/$(node_name "$n")" ]; then
			add_replica_n "$n"
			start_health "$n"
			echo "HAProxy already knows $(node_name "$n"): it joins the read rotation once its health check passes."
			return 0
		fi
	done
	die "all $MAX_REPLICAS replica slots of the HAProxy config are in use"
}

writes() {
	local count=${1:-3} i
	say "writes through the write port ($WRITE_PORT)"
	psql_through "create the table" "$WRITE_PORT" "CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text, at timestamptz DEFAULT now())"
	for i in $(seq 1 "$count"); do
		psql_through "write $i" "$WRITE_PORT" "INSERT INTO demo (note) VALUES ('write $i') RETURNING 'write $i landed on port ' || inet_server_port() || CASE WHEN pg_is_in_recovery() THEN ' (a replica?!)' ELSE ' (the primary)' END"
	done
}

reads() {
	local count=${1:-6}
	say "reads through the read port ($READ_PORT): who answered?"
	local i
	for i in $(seq 1 "$count"); do
		psql_through "read $i" "$READ_PORT" "SELECT 'read $i answered by port ' || inet_server_port() || CASE WHEN pg_is_in_recovery() THEN ' (replica)' ELSE ' (primary, as fallback)' END || ', demo rows: ' || (SELECT count(*) FROM demo)"
	done
}

down() {
	say "stopping the demo in $DEMO_DIR"
	[ -f "$DEMO_DIR/run/haproxy.pid" ] && { kill "$(cat "$DEMO_DIR/run/haproxy.pid")" 2>/dev/null || true; rm -f "$DEMO_DIR/run/haproxy.pid"; }
	for f in "$DEMO_DIR"/run/health-*.pid; do [ -e "$f" ] && stop_bg "$(basename "$f" .pid)"; done
	stop_bg stream
	if [ -f "$DEMO_DIR/run/up" ]; then
		tac "$DEMO_DIR/run/up" | while read -r ctl; do as_pg $ctl -m fast stop >/dev/null 2>&1 || true; done
		rm -f "$DEMO_DIR/run/up"
	fi
	echo "stopped; the state is still in $DEMO_DIR (rm -rf $DEMO_DIR to remove it)"
}

case "${1:-}" in
up) up ;;
add-replica) add_replica ;;
writes) writes "${2:-3}" ;;
reads) reads "${2:-6}" ;;
down) down ;;
*) die "usage: $0 up|add-replica|writes [N]|reads [N]|down" ;;
esac
