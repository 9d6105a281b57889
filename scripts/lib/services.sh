# shellcheck shell=bash
#
# Provisioning of the services the Herald test suite talks to:
# PostgreSQL, Redis, NATS (with JetStream), RabbitMQ and a Kafka-compatible
# broker (tansu).
#
# For every service we first look for one that is already reachable (either
# the URL given in the matching HERALD_TEST_*_URL variable or the default
# port on 127.0.0.1). Only when nothing answers do we start our own instance,
# installing the package first if needed. Everything we start is recorded in
# a work directory (SVC_WORK) so that `services_stop_started` can stop
# exactly those services and nothing else.
#
# Sourced by scripts/test; expects `set -euo pipefail` and bash >= 4.4.

# Directory holding pid files, logs and data of the services we start.
SVC_WORK=""
# Set to 1 once `apt-get update` has run in this process.
SVC_APT_UPDATED=0
# Path of a policy-rc.d we created to stop packages from auto-starting.
SVC_POLICY_RC=""
# Services started by this process (names from SVC_NAMES).
SVC_STARTED_NOW=()

# Timeouts, in seconds.
SVC_WAIT_DEFAULT=${HERALD_TEST_SERVICE_TIMEOUT:-60}
SVC_WAIT_RABBITMQ=${HERALD_TEST_RABBITMQ_TIMEOUT:-120}

# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

log() { printf '%s\n' "$*" >&2; }

die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Hide the password part of a URL before printing it.
redact_url() {
	# shellcheck disable=SC2001
	sed -e 's#^\([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*\):[^@/]*@#\1:***@#' <<<"$1"
}

# Print the last lines of a log file, indented, to stderr.
show_log_tail() {
	local file=$1 lines=${2:-40}
	if [[ -s $file ]]; then
		log "---- last $lines lines of $file ----"
		tail -n "$lines" "$file" | sed 's/^/    /' >&2
		log "----"
	elif [[ -n $file ]]; then
		log "(log $file is empty or missing)"
	fi
}

# Run a command as root: directly when we are root, else through
# non-interactive sudo.
as_root() {
	if ((EUID == 0)); then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		die "need root privileges to run '$*' (not root and sudo is not available)"
	fi
}

# find_bin NAME [DIR...]: print the path of NAME, looking in PATH first and
# then in the given directories.
find_bin() {
	local name=$1 dir
	shift
	if command -v "$name" >/dev/null 2>&1; then
		command -v "$name"
		return 0
	fi
	for dir in "$@" /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
		if [[ -x $dir/$name ]]; then
			printf '%s\n' "$dir/$name"
			return 0
		fi
	done
	return 1
}

remove_policy_rc() {
	if [[ -n $SVC_POLICY_RC ]]; then
		as_root rm -f "$SVC_POLICY_RC" || true
		SVC_POLICY_RC=""
	fi
}

# apt_install PACKAGE...: install Debian packages without prompts. Package
# maintainer scripts are prevented from starting the services they install
# (through policy-rc.d), since we start and stop our own instances.
apt_install() {
	command -v apt-get >/dev/null 2>&1 ||
		die "cannot install $*: apt-get is not available; please install it by hand"
	if ((SVC_APT_UPDATED == 0)); then
		log "apt-get update"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2 ||
			die "apt-get update failed"
		SVC_APT_UPDATED=1
	fi
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\n# Temporarily installed by Herald scripts/test.\nexit 101\n' |
			as_root tee /usr/sbin/policy-rc.d >/dev/null
		as_root chmod 755 /usr/sbin/policy-rc.d
		SVC_POLICY_RC=/usr/sbin/policy-rc.d
	fi
	log "apt-get install $*"
	local rc=0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		"$@" </dev/null >&2 || rc=$?
	remove_policy_rc
	((rc == 0)) || die "apt-get install $* failed (exit code $rc)"
}

# endpoint_of URL DEFAULT_PORT: sets EP_HOST and EP_PORT from a URL such as
# scheme://user:pass@host:port/path?query or a bare host:port (the first
# entry of a comma separated list is used).
endpoint_of() {
	local rest=$1 default_port=$2
	rest=${rest#*://}
	rest=${rest%%/*}
	rest=${rest%%\?*}
	rest=${rest%%,*}
	rest=${rest##*@}
	if [[ $rest == \[* ]]; then
		EP_HOST=${rest%%]*}
		EP_HOST=${EP_HOST#[}
		rest=${rest#*]}
		EP_PORT=${rest#:}
	elif [[ $rest == *:* ]]; then
		EP_HOST=${rest%%:*}
		EP_PORT=${rest##*:}
	else
		EP_HOST=$rest
		EP_PORT=""
	fi
	EP_HOST=${EP_HOST:-127.0.0.1}
	EP_PORT=${EP_PORT:-$default_port}
	[[ $EP_PORT =~ ^[0-9]+$ ]] || die "cannot find a port number in '$(redact_url "$1")'"
}

# tcp_open HOST PORT: succeeds when a TCP connection can be opened.
tcp_open() {
	# shellcheck disable=SC2016 # expanded by the inner shell
	timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" >/dev/null 2>&1
}

# wait_for NAME SECONDS LOGFILE PID COMMAND...: poll COMMAND once a second
# until it succeeds. Fails with the tail of LOGFILE when SECONDS have passed
# or when PID (if not empty) is no longer alive.
wait_for() {
	local name=$1 limit=$2 logfile=$3 pid=$4
	shift 4
	local start=$SECONDS tries=0
	while ((tries < limit * 2 + 5)); do
		tries=$((tries + 1))
		if "$@" >/dev/null 2>&1; then
			log "$name: ready after $((SECONDS - start))s"
			return 0
		fi
		if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
			show_log_tail "$logfile"
			die "$name exited while starting up (see the log above)"
		fi
		if ((SECONDS - start >= limit)); then
			break
		fi
		sleep 1
	done
	show_log_tail "$logfile"
	die "$name did not become ready within ${limit}s (see the log above)"
}

# is_pid_of PID NAME: PID is alive and its command line mentions NAME.
is_pid_of() {
	local pid=$1 name=$2
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	[[ -r /proc/$pid/cmdline ]] || return 0
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$name"
}

# stop_pid NAME PID PATTERN: TERM the process, then KILL it if it is still
# there after 15 seconds.
stop_pid() {
	local name=$1 pid=$2 pattern=$3 i
	if ! is_pid_of "$pid" "$pattern"; then
		log "stopping $name: process $pid is already gone"
		return 0
	fi
	log "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 30; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.5
	done
	log "$name did not exit after TERM; sending KILL"
	kill -KILL "$pid" 2>/dev/null || true
}

# Start a command in the background in its own session, so that a Ctrl-C
# in the terminal does not reach it before we stop it ourselves.
# Usage: spawn PIDFILE LOGFILE DIR COMMAND...
spawn() {
	local pidfile=$1 logfile=$2 dir=$3
	shift 3
	if command -v setsid >/dev/null 2>&1; then
		(cd "$dir" && exec setsid "$@" </dev/null >>"$logfile" 2>&1) &
	else
		(cd "$dir" && exec "$@" </dev/null >>"$logfile" 2>&1) &
	fi
	printf '%s\n' "$!" >"$pidfile"
}

report() {
	# report SERVICE WHAT URL
	printf '%-9s %s: %s\n' "$1" "$2" "$3" >&2
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# Directory with initdb/pg_ctl: the newest Debian install, or from PATH.
pg_bindir() {
	local dir
	dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	if [[ -x $dir/initdb && -x $dir/pg_ctl ]]; then
		printf '%s\n' "$dir"
	elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
		dirname "$(command -v pg_ctl)"
	else
		return 1
	fi
}

# pg_check_createdb URL HINT: connect with psql (when available) and check
# that the user may create databases.
pg_check_createdb() {
	local url=$1 hint=$2 psql out
	if ! psql=$(find_bin psql "$(pg_bindir 2>/dev/null || true)"); then
		log "postgres: psql not found, not checking the CREATE DATABASE privilege"
		return 0
	fi
	if ! out=$(PGCONNECT_TIMEOUT=10 timeout 20 "$psql" -X -w -q -t -A -d "$url" \
		-c 'select rolcreatedb or rolsuper from pg_roles where rolname = current_user' \
		</dev/null 2>&1); then
		die "cannot connect to PostgreSQL at $(redact_url "$url"): ${out}${hint:+ ($hint)}"
	fi
	if [[ $out != t ]]; then
		die "the PostgreSQL user in $(redact_url "$url") may not CREATE DATABASE, which the tests need${hint:+ ($hint)}"
	fi
}

pg_start() {
	local bindir dir base as_pg=()
	if ! bindir=$(pg_bindir); then
		log "postgres: PostgreSQL binaries not found, installing them"
		apt_install postgresql
		bindir=$(pg_bindir) || die "PostgreSQL is installed but initdb/pg_ctl cannot be found"
	fi

	# The data directory must be owned by the user running the server; when
	# we are root that is the `postgres` OS user, which cannot enter a
	# private directory of root, hence a separate directory under /tmp.
	base=${TMPDIR:-/tmp}
	if ((EUID == 0)); then
		id postgres >/dev/null 2>&1 ||
			die "running as root but there is no 'postgres' OS user to run the PostgreSQL server"
		base=/tmp
		as_pg=(runuser -u postgres --)
	fi
	dir=$(mktemp -d "$base/herald-postgres.XXXXXX")
	printf '%s %s\n' "$dir" "$bindir" >"$SVC_WORK/postgres.state"
	SVC_STARTED_NOW+=(postgres)
	if ((EUID == 0)); then
		chown postgres: "$dir"
	fi

	log "postgres: initialising a throwaway cluster in $dir"
	if ! (cd "$dir" && "${as_pg[@]}" "$bindir/initdb" -D "$dir/data" -A trust -U postgres \
		-E UTF8 --no-sync >"$dir/initdb.log" 2>&1); then
		show_log_tail "$dir/initdb.log"
		die "initdb failed for the PostgreSQL test cluster"
	fi

	log "postgres: starting it on 127.0.0.1:5432"
	if ! (cd "$dir" && "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" \
		-o "-c listen_addresses=127.0.0.1 -c port=5432 -c unix_socket_directories=$dir -c fsync=off" \
		-w -t "$SVC_WAIT_DEFAULT" start >"$dir/pg_ctl.log" 2>&1); then
		show_log_tail "$dir/pg_ctl.log" 10
		show_log_tail "$dir/postgres.log"
		die "PostgreSQL did not start (see the log above)"
	fi

	local pg_isready
	pg_isready=$(find_bin pg_isready "$bindir") || die "pg_isready not found"
	wait_for PostgreSQL "$SVC_WAIT_DEFAULT" "$dir/postgres.log" "" \
		"$pg_isready" -q -h 127.0.0.1 -p 5432 -t 2
}

postgres_stop() {
	local state=$SVC_WORK/postgres.state dir bindir pid
	[[ -f $state ]] || return 0
	read -r dir bindir <"$state" || true
	if [[ -n ${dir:-} && -f $dir/data/postmaster.pid ]]; then
		log "stopping PostgreSQL (cluster in $dir)"
		if ((EUID == 0)); then
			(cd "$dir" && runuser -u postgres -- "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop) >/dev/null 2>&1
		else
			(cd "$dir" && "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop) >/dev/null 2>&1
		fi || {
			pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
			[[ -n $pid ]] && stop_pid PostgreSQL "$pid" postgres
		}
	fi
	if [[ -n ${dir:-} && $dir == */herald-postgres.* ]]; then
		rm -rf "$dir"
	fi
	rm -f "$state"
}

provision_postgres() {
	local var=HERALD_TEST_POSTGRES_URL url=${HERALD_TEST_POSTGRES_URL:-}
	if [[ -n $url ]]; then
		endpoint_of "$url" 5432
		tcp_open "$EP_HOST" "$EP_PORT" ||
			die "$var is set, but nothing accepts connections on $EP_HOST:$EP_PORT ($(redact_url "$url"))"
		pg_check_createdb "$url" "from $var"
		report postgres "using the server from $var" "$(redact_url "$url")"
		export HERALD_TEST_POSTGRES_URL=$url
		return 0
	fi

	url=postgres://postgres@127.0.0.1:5432/postgres
	if tcp_open 127.0.0.1 5432; then
		pg_check_createdb "$url" "set $var to point the tests at a usable server"
		report postgres "using the running server" "$url"
	else
		pg_start
		pg_check_createdb "$url" ""
		report postgres "started a throwaway cluster" "$url"
	fi
	export HERALD_TEST_POSTGRES_URL=$url
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

redis_ping() {
	local out
	out=$(timeout 5 "$@" ping 2>&1 </dev/null) && [[ $out == PONG ]]
}

redis_start() {
	local bin cli
	if ! bin=$(find_bin redis-server); then
		log "redis: redis-server not found, installing it"
		apt_install redis-server
		bin=$(find_bin redis-server) || die "redis-server is installed but cannot be found"
	fi
	cli=$(find_bin redis-cli) || die "redis-cli not found (package redis-tools)"
	mkdir -p "$SVC_WORK/redis"
	: >"$SVC_WORK/redis.log"
	log "redis: starting redis-server on 127.0.0.1:6379"
	SVC_STARTED_NOW+=(redis)
	if ! "$bin" --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
		--daemonize yes --pidfile "$SVC_WORK/redis.pid" \
		--logfile "$SVC_WORK/redis.log" --dir "$SVC_WORK/redis" </dev/null >&2; then
		show_log_tail "$SVC_WORK/redis.log"
		die "redis-server failed to start"
	fi
	wait_for Redis "$SVC_WAIT_DEFAULT" "$SVC_WORK/redis.log" "" \
		redis_ping "$cli" -h 127.0.0.1 -p 6379
}

redis_stop() {
	local pidfile=$SVC_WORK/redis.pid pid
	[[ -f $pidfile ]] || return 0
	pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
	stop_pid Redis "$pid" redis-server
	rm -rf "$pidfile" "$SVC_WORK/redis" "$SVC_WORK/redis.log"
}

provision_redis() {
	local var=HERALD_TEST_REDIS_URL url=${HERALD_TEST_REDIS_URL:-} cli
	if [[ -n $url ]]; then
		endpoint_of "$url" 6379
		tcp_open "$EP_HOST" "$EP_PORT" ||
			die "$var is set, but nothing accepts connections on $EP_HOST:$EP_PORT ($(redact_url "$url"))"
		if cli=$(find_bin redis-cli); then
			redis_ping "$cli" -u "$url" ||
				die "the Redis server from $var ($(redact_url "$url")) does not answer PING"
		fi
		report redis "using the server from $var" "$(redact_url "$url")"
		export HERALD_TEST_REDIS_URL=$url
		return 0
	fi

	url=redis://127.0.0.1:6379
	if tcp_open 127.0.0.1 6379; then
		if cli=$(find_bin redis-cli); then
			redis_ping "$cli" -h 127.0.0.1 -p 6379 ||
				die "something listens on 127.0.0.1:6379 but does not answer a Redis PING (set $var to use another server)"
		fi
		report redis "using the running server" "$url"
	else
		redis_start
		report redis "started redis-server" "$url"
	fi
	export HERALD_TEST_REDIS_URL=$url
}

# ---------------------------------------------------------------------------
# NATS with JetStream
# ---------------------------------------------------------------------------

# nats_info HOST PORT: print the INFO line a NATS server sends on connect.
nats_info() {
	# shellcheck disable=SC2016 # expanded by the inner shell
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		IFS= read -r -t 2 line <&3 || exit 1
		printf "%s\n" "$line"
	' "$1" "$2" 2>/dev/null
}

nats_has_jetstream() {
	local info
	info=$(nats_info "$1" "$2") || return 1
	[[ $info == INFO* && $info == *'"jetstream":true'* ]]
}

nats_start() {
	local bin
	if ! bin=$(find_bin nats-server); then
		log "nats: nats-server not found, installing it"
		apt_install nats-server
		bin=$(find_bin nats-server) || die "nats-server is installed but cannot be found"
	fi
	mkdir -p "$SVC_WORK/nats"
	: >"$SVC_WORK/nats.log"
	log "nats: starting nats-server with JetStream on 127.0.0.1:4222"
	SVC_STARTED_NOW+=(nats)
	spawn "$SVC_WORK/nats.pid" "$SVC_WORK/nats.log" "$SVC_WORK/nats" \
		"$bin" -a 127.0.0.1 -p 4222 -js -sd "$SVC_WORK/nats"
	wait_for NATS "$SVC_WAIT_DEFAULT" "$SVC_WORK/nats.log" "$(cat "$SVC_WORK/nats.pid")" \
		nats_has_jetstream 127.0.0.1 4222
}

nats_stop() {
	local pidfile=$SVC_WORK/nats.pid pid
	[[ -f $pidfile ]] || return 0
	pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
	stop_pid NATS "$pid" nats-server
	rm -rf "$pidfile" "$SVC_WORK/nats" "$SVC_WORK/nats.log"
}

provision_nats() {
	local var=HERALD_TEST_NATS_URL url=${HERALD_TEST_NATS_URL:-}
	if [[ -n $url ]]; then
		endpoint_of "$url" 4222
		tcp_open "$EP_HOST" "$EP_PORT" ||
			die "$var is set, but nothing accepts connections on $EP_HOST:$EP_PORT ($(redact_url "$url"))"
		nats_has_jetstream "$EP_HOST" "$EP_PORT" ||
			die "the NATS server from $var ($(redact_url "$url")) does not have JetStream enabled (start it with -js)"
		report nats "using the server from $var" "$(redact_url "$url")"
		export HERALD_TEST_NATS_URL=$url
		return 0
	fi

	url=nats://127.0.0.1:4222
	if tcp_open 127.0.0.1 4222; then
		nats_has_jetstream 127.0.0.1 4222 ||
			die "the NATS server on 127.0.0.1:4222 does not have JetStream enabled; restart it with -js or set $var"
		report nats "using the running server" "$url"
	else
		nats_start
		report nats "started nats-server with JetStream" "$url"
	fi
	export HERALD_TEST_NATS_URL=$url
}

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------

# amqp_probe HOST PORT: send the AMQP 0-9-1 protocol header and check that
# the server answers with a method frame (Connection.Start).
amqp_probe() {
	local first
	# shellcheck disable=SC2016 # expanded by the inner shell
	first=$(timeout 5 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		printf "AMQP\x00\x00\x09\x01" >&3
		head -c 1 <&3 | od -An -tx1
	' "$1" "$2" 2>/dev/null) || return 1
	[[ ${first//[[:space:]]/} == 01 ]]
}

rabbitmq_log() {
	local f newest=""
	for f in /var/log/rabbitmq/rabbit*.log; do
		[[ -f $f && $f != *_upgrade.log ]] || continue
		if [[ -z $newest || $f -nt $newest ]]; then
			newest=$f
		fi
	done
	printf '%s\n' "$newest"
}

rabbitmq_ready() {
	local ctl=$1
	timeout 20 "$ctl" -q await_startup </dev/null && tcp_open 127.0.0.1 5672 && amqp_probe 127.0.0.1 5672
}

rabbitmq_start() {
	local server ctl
	if ! server=$(find_bin rabbitmq-server); then
		log "rabbitmq: rabbitmq-server not found, installing it"
		apt_install rabbitmq-server
		server=$(find_bin rabbitmq-server) || die "rabbitmq-server is installed but cannot be found"
	fi
	ctl=$(find_bin rabbitmqctl) || die "rabbitmqctl not found"
	log "rabbitmq: starting rabbitmq-server (this can take a minute)"
	printf '%s\n' "$ctl" >"$SVC_WORK/rabbitmq.started"
	SVC_STARTED_NOW+=(rabbitmq)
	if ! (cd / && timeout 60 "$server" -detached) </dev/null >"$SVC_WORK/rabbitmq-start.log" 2>&1; then
		show_log_tail "$SVC_WORK/rabbitmq-start.log"
		show_log_tail "$(rabbitmq_log)"
		die "rabbitmq-server -detached failed"
	fi
	local start=$SECONDS
	while ! rabbitmq_ready "$ctl" >/dev/null 2>&1; do
		if ((SECONDS - start >= SVC_WAIT_RABBITMQ)); then
			show_log_tail "$SVC_WORK/rabbitmq-start.log"
			show_log_tail "$(rabbitmq_log)"
			die "RabbitMQ did not become ready within ${SVC_WAIT_RABBITMQ}s (see the log above)"
		fi
		sleep 2
	done
	log "RabbitMQ: ready after $((SECONDS - start))s"
}

rabbitmq_stop() {
	local marker=$SVC_WORK/rabbitmq.started ctl
	[[ -f $marker ]] || return 0
	ctl=$(head -n 1 "$marker")
	log "stopping RabbitMQ"
	(cd / && timeout 90 "$ctl" -q stop) </dev/null >/dev/null 2>&1 ||
		log "warning: 'rabbitmqctl stop' failed; RabbitMQ may still be running"
	rm -f "$marker" "$SVC_WORK/rabbitmq-start.log"
}

provision_rabbitmq() {
	local var=HERALD_TEST_AMQP_URL url=${HERALD_TEST_AMQP_URL:-}
	if [[ -n $url ]]; then
		endpoint_of "$url" 5672
		tcp_open "$EP_HOST" "$EP_PORT" ||
			die "$var is set, but nothing accepts connections on $EP_HOST:$EP_PORT ($(redact_url "$url"))"
		amqp_probe "$EP_HOST" "$EP_PORT" ||
			die "the server from $var ($(redact_url "$url")) does not speak AMQP 0-9-1"
		report rabbitmq "using the server from $var" "$(redact_url "$url")"
		export HERALD_TEST_AMQP_URL=$url
		return 0
	fi

	url='amqp://guest:guest@127.0.0.1:5672/%2f'
	if tcp_open 127.0.0.1 5672; then
		amqp_probe 127.0.0.1 5672 ||
			die "something listens on 127.0.0.1:5672 but does not speak AMQP 0-9-1 (set $var to use another server)"
		report rabbitmq "using the running server" "$url"
	else
		rabbitmq_start
		report rabbitmq "started rabbitmq-server" "$url"
	fi
	export HERALD_TEST_AMQP_URL=$url
}

# ---------------------------------------------------------------------------
# Kafka-compatible broker (tansu)
# ---------------------------------------------------------------------------

# kafka_probe HOST PORT: send an ApiVersions (v0) request and check that a
# response with our correlation id comes back.
kafka_probe() {
	local hex
	# shellcheck disable=SC2016 # expanded by the inner shell
	hex=$(timeout 5 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		# size 16 | api_key 18 | api_version 0 | correlation_id 0x4845 | client_id "herald"
		printf "\x00\x00\x00\x10\x00\x12\x00\x00\x00\x00\x48\x45\x00\x06herald" >&3
		head -c 8 <&3 | od -An -tx1
	' "$1" "$2" 2>/dev/null) || return 1
	hex=${hex//[[:space:]]/}
	[[ ${#hex} == 16 && ${hex:8:8} == 00004845 ]]
}

kafka_ready() {
	tcp_open 127.0.0.1 9092 && kafka_probe 127.0.0.1 9092
}

tansu_install() {
	command -v cargo >/dev/null 2>&1 ||
		die "tansu is not installed and cargo is not available to install it"
	log "kafka: installing the tansu broker with 'cargo install tansu --features dynostore --locked'"
	log "kafka: this is a one-off build that takes a while (10 minutes or more)"
	local start=$SECONDS
	# Build in cargo's own temporary directory, not in Herald's target dir.
	env -u CARGO_TARGET_DIR cargo install tansu --features dynostore --locked </dev/null >&2 ||
		die "cargo install tansu failed"
	log "kafka: tansu installed in $((SECONDS - start))s"
}

kafka_start() {
	local bin cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
	if ! bin=$(find_bin tansu "$cargo_bin"); then
		tansu_install
		bin=$(find_bin tansu "$cargo_bin") || die "tansu was installed but cannot be found"
	fi
	mkdir -p "$SVC_WORK/tansu"
	: >"$SVC_WORK/tansu.log"
	log "kafka: starting tansu (in-memory storage) on 127.0.0.1:9092"
	SVC_STARTED_NOW+=(kafka)
	# Run from an empty directory: tansu reads a .env file from its working
	# directory. The flags override any LISTENER_URL/STORAGE_ENGINE/... in
	# the environment.
	spawn "$SVC_WORK/tansu.pid" "$SVC_WORK/tansu.log" "$SVC_WORK/tansu" \
		env -u OTEL_EXPORTER_OTLP_ENDPOINT "$bin" broker \
		--listener-url tcp://127.0.0.1:9092 \
		--advertised-listener-url tcp://127.0.0.1:9092 \
		--storage-engine memory://tansu/
	wait_for "Kafka (tansu)" "$SVC_WAIT_DEFAULT" "$SVC_WORK/tansu.log" "$(cat "$SVC_WORK/tansu.pid")" \
		kafka_ready
}

kafka_stop() {
	local pidfile=$SVC_WORK/tansu.pid pid
	[[ -f $pidfile ]] || return 0
	pid=$(head -n 1 "$pidfile" 2>/dev/null || true)
	stop_pid "Kafka (tansu)" "$pid" tansu
	rm -rf "$pidfile" "$SVC_WORK/tansu" "$SVC_WORK/tansu.log"
}

provision_kafka() {
	local var=HERALD_TEST_KAFKA_URL url=${HERALD_TEST_KAFKA_URL:-}
	if [[ -n $url ]]; then
		endpoint_of "$url" 9092
		tcp_open "$EP_HOST" "$EP_PORT" ||
			die "$var is set, but nothing accepts connections on $EP_HOST:$EP_PORT ($url)"
		kafka_probe "$EP_HOST" "$EP_PORT" ||
			die "the broker from $var ($url) does not answer a Kafka ApiVersions request"
		report kafka "using the broker from $var" "$url"
		export HERALD_TEST_KAFKA_URL=$url
		return 0
	fi

	url=127.0.0.1:9092
	if tcp_open 127.0.0.1 9092; then
		kafka_probe 127.0.0.1 9092 ||
			die "something listens on 127.0.0.1:9092 but does not answer a Kafka ApiVersions request (set $var to use another broker)"
		report kafka "using the running broker" "$url"
	else
		kafka_start
		report kafka "started tansu" "$url"
	fi
	export HERALD_TEST_KAFKA_URL=$url
}

# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

SVC_NAMES=(postgres redis nats rabbitmq kafka)

# services_provision WORKDIR: make every service reachable and export the
# HERALD_TEST_*_URL variables.
services_provision() {
	SVC_WORK=$1
	mkdir -p "$SVC_WORK"
	local name
	for name in "${SVC_NAMES[@]}"; do
		"provision_$name"
	done
}

# services_stop_started WORKDIR [NAME...]: stop the services recorded in
# WORKDIR (the ones we started), newest first; only the NAMEs when given.
services_stop_started() {
	SVC_WORK=$1
	shift
	[[ -d $SVC_WORK ]] || return 0
	local only=" $* " i name
	for ((i = ${#SVC_NAMES[@]} - 1; i >= 0; i--)); do
		name=${SVC_NAMES[i]}
		if (($# == 0)) || [[ $only == *" $name "* ]]; then
			"${name}_stop" || true
		fi
	done
}

# services_started WORKDIR: succeeds when WORKDIR records a started service.
services_started() {
	local f
	for f in postgres.state redis.pid nats.pid rabbitmq.started tansu.pid; do
		[[ -e $1/$f ]] && return 0
	done
	return 1
}

services_print_exports() {
	local var
	for var in HERALD_TEST_POSTGRES_URL HERALD_TEST_REDIS_URL HERALD_TEST_NATS_URL \
		HERALD_TEST_AMQP_URL HERALD_TEST_KAFKA_URL; do
		printf 'export %s=%q\n' "$var" "${!var}"
	done
}
