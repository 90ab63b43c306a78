#!/usr/bin/env bash
# The local server stack of the sensor pipeline, as plain processes (no containers):
#   Apache Kafka 4 (KRaft, one combined broker+controller), Mosquitto 2 (MQTT v5),
#   PostgreSQL 15 + TimescaleDB.
#
#   bash deploy/local/stack.sh up|down|status      (make up / make down / make status)
#
# Everything it makes (jars, builds, data, logs, pid files, rendered configs) lives in
# <repo>/.stack/, which git ignores; servers listen on 127.0.0.1 only.
# Settings (environment, with defaults):
#   KAFKA_PORT=9092  KAFKA_CONTROLLER_PORT=9093  MQTT_PORT=1883  PG_PORT=5432  PG_MAJOR=15
#   KAFKA_HEAP_OPTS="-Xmx512m -Xms256m"  STACK_START_TIMEOUT=120 (seconds, per server)
#   STACK_DIR=<repo>/.stack (the servers' state; downloads and builds stay in .stack/)
# See deploy/local/README.md.
set -Eeuo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
# Downloads and builds (jars, Maven repository, TimescaleDB source) are cached in .stack/ and
# shared; the servers' state (configs, data, logs, pids) lives in STACK_DIR, .stack/ unless
# set: a second stack on other ports (the fault tests run one) keeps its own state.
CACHE="$ROOT/.stack"
STACK=${STACK_DIR:-$CACHE}
LOGS="$STACK/logs"
RUN="$STACK/run"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
MQTT_PORT=${MQTT_PORT:-1883}
PG_PORT=${PG_PORT:-5432}
PG_MAJOR=${PG_MAJOR:-15}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}
START_TIMEOUT=${STACK_START_TIMEOUT:-120}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-30}

# The application's database: local throwaway credentials, the defaults of DATABASE_URL.
DB_NAME=sensors
DB_USER=sensors
DB_PASSWORD=sensors

KAFKA_DIR="$STACK/kafka"
KAFKA_LIBS="$CACHE/kafka/libs"
KAFKA_CONF="$KAFKA_DIR/server.properties"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PID="$RUN/kafka.pid"

MQTT_DIR="$STACK/mosquitto"
MQTT_CONF="$MQTT_DIR/mosquitto.conf"
MQTT_PID="$RUN/mosquitto.pid"

PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
PG_PID="$RUN/postgres.pid"
# PG_BASE (data dir, socket dir) is .stack/pg unless the OS user `postgres` cannot reach it:
# see pg_base().

SUDO=()
if [[ $EUID -ne 0 ]]; then SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- output and failure
STEP="starting"
STEP_LOG=""

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }

# step NAME [LOG]: announce a step; a failure from here on names it and its log.
step() {
  STEP=$1
  STEP_LOG=${2:-}
  say "$STEP"
}

die() {
  {
    echo "stack.sh: FAILED at step: $STEP"
    [[ $# -gt 0 ]] && echo "stack.sh: $*"
    if [[ -n $STEP_LOG ]]; then
      echo "stack.sh: read the log: $STEP_LOG"
      if [[ -f $STEP_LOG ]]; then
        echo "---- last lines of $STEP_LOG ----"
        tail -n 15 "$STEP_LOG" || true
        echo "----"
      fi
    fi
  } >&2
  exit 1
}

on_error() {
  local rc=$1 cmd=$2
  trap - ERR
  die "command failed (exit $rc): $cmd"
}
trap 'on_error $? "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------- helpers
port_open() { # port: something accepts TCP connections on 127.0.0.1:port
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

port_taken() { # port hint
  STEP_LOG=""
  die "port 127.0.0.1:$1 is taken by a process this stack did not start: stop it or set $2"
}

# pid_of FILE MARKER: prints the pid in FILE if that process is alive and its command line
# contains MARKER (so that a recycled pid is never taken for ours); else fails.
pid_of() {
  local file=$1 marker=$2 pid
  [[ -f $file ]] || return 1
  pid=$(head -n 1 "$file" 2>/dev/null | tr -dc '0-9')
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$marker"* ]] || return 1
  echo "$pid"
}

# The ports a running server was started with, read back from its rendered config.
kafka_conf_port() { sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\).*|\1|p' "$KAFKA_CONF" 2>/dev/null; }
mqtt_conf_port() { sed -n 's|^listener \([0-9]*\) .*|\1|p' "$MQTT_CONF" 2>/dev/null; }
pg_conf_port() { sed -n 's|^port = \([0-9]*\)|\1|p' "$(pg_base)/data/stack.conf" 2>/dev/null; }

# already_running NAME PID RUNNING_PORT WANTED_PORT VAR: fails when a running server listens
# on another port than the one asked for now.
already_running() {
  if [[ -n $3 && $3 != "$4" ]]; then
    STEP_LOG=""
    die "$1 is running (pid $2) on port $3, but $5=$4: run 'make down' first to move it"
  fi
  note "$1: already running (pid $2)"
}

# stop_pid NAME PID SIGNAL...: sends each signal in turn, waiting STOP_TIMEOUT seconds for
# the process to end after each; SIGKILL last.
stop_pid() {
  local name=$1 pid=$2 sig i
  shift 2
  for sig in "$@" KILL; do
    [[ $sig == KILL ]] && note "$name (pid $pid) did not stop in ${STOP_TIMEOUT}s: SIGKILL"
    kill "-$sig" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.2
    done
  done
  kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) survived SIGKILL"
  return 0
}

apt_missing() { # prints those of the given packages that are not installed
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

apt_install() { # installs the missing ones of the given Debian packages
  local missing
  mapfile -t missing < <(apt_missing "$@")
  [[ ${#missing[@]} -eq 0 ]] && return 0
  step "apt: installing ${missing[*]}" "$LOGS/apt.log"
  if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1; then
    note "install failed; refreshing the package lists (apt-get update) and trying again"
    "${SUDO[@]}" apt-get update >>"$LOGS/apt.log" 2>&1
    "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1
  fi
}

os_codename() {
  # shellcheck disable=SC1091
  (. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
}

# debian_mirror CODENAME: the Debian archive URI that this machine's apt sources use for
# CODENAME (a proxy or mirror if the machine has one); deb.debian.org if none is found.
debian_mirror() {
  local codename=$1 f uri=""
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk -v c="$codename" '
      BEGIN { RS = ""; FS = "\n" }
      {
        u = ""; s = 0; on = 1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, a, /[ \t]+/); u = a[1] }
          if ($i ~ /^Suites:/) { n = split($i, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == c) s = 1 }
          if ($i ~ /^Enabled:[ \t]*no/) on = 0
        }
        if (s && on && u ~ /^https?:\/\//) { print u; exit }
      }' "$f")
    [[ -n $uri ]] && { echo "${uri%/}"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk -v c="$codename" '
      $1 == "deb" || $1 == "deb-src" {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == c && $i ~ /^https?:\/\//) { print $i; exit }
      }' "$f")
    [[ -n $uri ]] && { echo "${uri%/}"; return; }
  done
  echo "http://deb.debian.org/debian"
}

# ---------------------------------------------------------------- Kafka
kafka_install() {
  if [[ -f "$KAFKA_LIBS/.complete" ]] && cmp -s "$KAFKA_LIBS/.complete" "$SCRIPT_DIR/kafka/pom.xml"; then
    note "Kafka jars: cached in .stack/kafka/libs"
    return 0
  fi
  if ! command -v java >/dev/null; then apt_install default-jre-headless; fi
  if ! command -v mvn >/dev/null; then apt_install maven; fi
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ { split($2, a, "."); print a[1]; exit }')
  [[ ${v:-0} -ge 17 ]] || die "Kafka 4 needs Java 17 or newer; 'java' is version ${v:-unknown}"

  step "Kafka: resolving the broker and tool jars from Maven Central (first time: ~60 MB)" \
    "$LOGS/kafka-maven.log"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$KAFKA_LIBS"
  mvn -B -q -f "$SCRIPT_DIR/kafka/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS" >"$LOGS/kafka-maven.log" 2>&1
  ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar was resolved"
  cp "$SCRIPT_DIR/kafka/pom.xml" "$KAFKA_LIBS/.complete"
  note "Kafka jars: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) in .stack/kafka/libs"
}

kafka_render_config() {
  cat >"$KAFKA_CONF" <<EOF
# Rendered by deploy/local/stack.sh on every 'up'; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Topics are created by the project's own command, never implicitly.
auto.create.topics.enable=false
log.retention.hours=168
EOF
}

kafka_java() { # runs a class from the jars, quietly (tool logging to stderr)
  java -Xmx256m -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_start() {
  local pid
  if pid=$(pid_of "$KAFKA_PID" "$KAFKA_CONF"); then
    already_running Kafka "$pid" "$(kafka_conf_port)" "$KAFKA_PORT" KAFKA_PORT
    return 0
  fi
  rm -f "$KAFKA_PID"
  mkdir -p "$KAFKA_DATA"
  kafka_render_config
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    step "Kafka: formatting the KRaft storage (once)" "$LOGS/kafka-format.log"
    [[ -f "$KAFKA_DIR/cluster.id" ]] ||
      kafka_java kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka-format.log" >"$KAFKA_DIR/cluster.id"
    kafka_java kafka.tools.StorageTool format --config "$KAFKA_CONF" \
      --cluster-id "$(cat "$KAFKA_DIR/cluster.id")" --ignore-formatted >>"$LOGS/kafka-format.log" 2>&1
  fi
  step "Kafka: starting the broker on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)" \
    "$LOGS/kafka.log"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && port_taken "$p" "KAFKA_PORT / KAFKA_CONTROLLER_PORT"
  done
  # shellcheck disable=SC2086  # heap options are a word list on purpose
  setsid java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dkafka.logs.dir="$LOGS" \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF" \
    >"$LOGS/kafka.stdout.log" 2>&1 </dev/null 9>&- &
  echo $! >"$KAFKA_PID"
  note "Kafka: pid $!; log .stack/logs/kafka.log (JVM output: .stack/logs/kafka.stdout.log)"
}

kafka_wait() {
  step "Kafka: waiting until the broker answers an ApiVersions request" "$LOGS/kafka.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! pid_of "$KAFKA_PID" "$KAFKA_CONF" >/dev/null; then
      # a JVM that could not start says why on its own output, not in kafka.log
      [[ -s "$LOGS/kafka.stdout.log" ]] && STEP_LOG="$LOGS/kafka.stdout.log"
      die "the Kafka process exited (logs: .stack/logs/kafka.log, .stack/logs/kafka.stdout.log)"
    fi
    if port_open "$KAFKA_PORT" &&
      out=$(timeout 30 java -Xmx128m -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/tools-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" 2>/dev/null) && [[ $out == *"Produce("* ]]; then
      note "Kafka: ready"
      return 0
    fi
    sleep 1
  done
  die "Kafka did not answer on 127.0.0.1:$KAFKA_PORT within ${START_TIMEOUT}s"
}

# ---------------------------------------------------------------- Mosquitto
mosquitto_bin() { command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto; }

mosquitto_install() {
  if [[ -x "$(mosquitto_bin)" ]] && command -v mosquitto_sub >/dev/null; then
    note "Mosquitto: $("$(mosquitto_bin)" -h 2>/dev/null | head -n 1 || true)"
    return 0
  fi
  apt_install mosquitto mosquitto-clients
}

mosquitto_start() {
  local pid
  if pid=$(pid_of "$MQTT_PID" "$MQTT_CONF"); then
    already_running Mosquitto "$pid" "$(mqtt_conf_port)" "$MQTT_PORT" MQTT_PORT
    return 0
  fi
  rm -f "$MQTT_PID"
  step "Mosquitto: starting on 127.0.0.1:$MQTT_PORT" "$LOGS/mosquitto.log"
  port_open "$MQTT_PORT" && port_taken "$MQTT_PORT" "MQTT_PORT (a system mosquitto service?)"
  mkdir -p "$MQTT_DIR/data"
  touch "$LOGS/mosquitto.log"
  # Started as root, mosquitto drops privileges to the user `mosquitto` (its default); that
  # user then owns its persistence dir and log file. If that user cannot reach .stack (a
  # parent folder is not searchable), it keeps running as root ('user root'). Not root: it
  # runs as the caller.
  local user_line="" run_as=""
  if [[ $EUID -eq 0 ]]; then
    if id mosquitto >/dev/null 2>&1 && runuser -u mosquitto -- test -x "$STACK" 2>/dev/null; then
      run_as=mosquitto
      chown -R mosquitto: "$MQTT_DIR/data" "$LOGS/mosquitto.log"
    else
      run_as=root
      note "Mosquitto: user 'mosquitto' cannot reach $STACK: it runs as root"
    fi
    user_line="user $run_as"
  fi
  cat >"$MQTT_CONF" <<EOF
# Rendered by deploy/local/stack.sh on every 'up'; edits here are overwritten.
${user_line}
per_listener_settings false
listener $MQTT_PORT 127.0.0.1
protocol mqtt
allow_anonymous true
# QoS 1 messages of persistent sessions survive a broker restart.
persistence true
persistence_location $MQTT_DIR/data/
autosave_interval 30
max_queued_messages 100000
log_dest file $LOGS/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
connection_messages true
EOF
  # Backgrounded rather than -d (daemon), so that its pid is known whoever it runs as.
  setsid "$(mosquitto_bin)" -c "$MQTT_CONF" >>"$LOGS/mosquitto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$MQTT_PID"
  note "Mosquitto: pid $!${run_as:+, as user $run_as}; log .stack/logs/mosquitto.log"
}

mosquitto_wait() {
  step "Mosquitto: waiting until it answers MQTT v5" "$LOGS/mosquitto.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    pid_of "$MQTT_PID" "$MQTT_CONF" >/dev/null || die "the mosquitto process exited"
    # shellcheck disable=SC2016  # $SYS is an MQTT topic, not a variable
    if port_open "$MQTT_PORT" &&
      timeout 10 mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -V mqttv5 -i "stack-sh-probe-$$" \
        -t '$SYS/broker/version' -C 1 -W 5 >/dev/null 2>&1; then
      note "Mosquitto: ready"
      return 0
    fi
    sleep 0.5
  done
  die "Mosquitto did not answer on 127.0.0.1:$MQTT_PORT within ${START_TIMEOUT}s"
}

# ---------------------------------------------------------------- PostgreSQL + TimescaleDB
# The OS user that owns and runs the cluster: `postgres` when we are root (PostgreSQL
# refuses to run as root), else the caller.
pg_user() { if [[ $EUID -eq 0 ]]; then echo postgres; else id -un; fi; }

as_pg() { # runs a command as pg_user, from a directory it can read
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# Where the cluster lives: .stack/pg when pg_user can reach it (every parent directory
# searchable), else a folder in that user's home named after this checkout.
pg_base() {
  if [[ $EUID -ne 0 ]] || runuser -u postgres -- test -x "$STACK" 2>/dev/null; then
    echo "$STACK/pg"
  else
    local home
    home=$(getent passwd postgres | cut -d: -f6)
    echo "${home:-/var/lib/postgresql}/sensor-stack-$(printf '%s' "$STACK" | md5sum | cut -c1-10)"
  fi
}

pg_sharedir() {
  if [[ -x "$PG_BIN/pg_config" ]]; then "$PG_BIN/pg_config" --sharedir; else echo "/usr/share/postgresql/$PG_MAJOR"; fi
}

timescaledb_installed() { [[ -f "$(pg_sharedir)/extension/timescaledb.control" ]]; }

postgres_install() {
  if [[ ! -x "$PG_BIN/postgres" ]]; then
    if ! apt-cache show "postgresql-$PG_MAJOR" >/dev/null 2>&1; then
      "${SUDO[@]}" apt-get update >>"$LOGS/apt.log" 2>&1 || true
    fi
    apt-cache show "postgresql-$PG_MAJOR" >/dev/null 2>&1 ||
      die "Debian $(os_codename) has no package postgresql-$PG_MAJOR; set PG_MAJOR to one it has"
    apt_install "postgresql-$PG_MAJOR"
  fi
  note "PostgreSQL: $("$PG_BIN/postgres" --version)"
  if timescaledb_installed; then
    note "TimescaleDB: installed ($(sed -n "s/^default_version = '\(.*\)'/\1/p" \
      "$(pg_sharedir)/extension/timescaledb.control"))"
    return 0
  fi
  local codename
  codename=$(os_codename)
  if [[ $codename != bookworm ]]; then
    # Debian 13 and later package TimescaleDB (for their own PostgreSQL versions).
    if apt-cache show "postgresql-$PG_MAJOR-timescaledb" >/dev/null 2>&1; then
      apt_install "postgresql-$PG_MAJOR-timescaledb"
      timescaledb_installed && return 0
    fi
    note "Debian $codename has no postgresql-$PG_MAJOR-timescaledb package: building it"
  fi
  timescaledb_build
  timescaledb_installed || die "TimescaleDB was built but its control file is not in $(pg_sharedir)/extension"
}

# Builds TimescaleDB from Debian trixie's source package, fetched through a private apt
# configuration under .stack/apt (the machine's /etc/apt is only read, never changed).
timescaledb_build() {
  local blog="$LOGS/timescaledb-build.log"
  apt_install cmake gcc make dpkg-dev xz-utils libssl-dev "postgresql-server-dev-$PG_MAJOR"

  local apt_dir="$CACHE/apt" mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts=""
  mirror=$(debian_mirror "$(os_codename)")
  mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$CACHE/build"
  if [[ -f $keyring ]]; then opts="[signed-by=$keyring] "; fi
  echo "deb-src ${opts}$mirror trixie main" >"$apt_dir/sources.list"
  local apt_priv=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list"
    -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")

  if ! compgen -G "$apt_dir/lists/*_Sources*" >/dev/null; then
    step "TimescaleDB: reading Debian trixie's source index from $mirror (private apt config)" "$blog"
    apt-get "${apt_priv[@]}" update >>"$blog" 2>&1
  fi
  local src
  src=$(find "$CACHE/build" -maxdepth 2 -path '*/timescaledb-*/CMakeLists.txt' -printf '%h\n' | sort | tail -n 1)
  if [[ -z $src ]]; then
    step "TimescaleDB: fetching the trixie source package (apt-get source timescaledb)" "$blog"
    (cd "$CACHE/build" && apt-get "${apt_priv[@]}" source timescaledb) >>"$blog" 2>&1
    src=$(find "$CACHE/build" -maxdepth 2 -path '*/timescaledb-*/CMakeLists.txt' -printf '%h\n' | sort | tail -n 1)
    [[ -n $src ]] || die "apt-get source timescaledb gave no source tree in $CACHE/build"
  fi
  local version
  version=$(sed -n 's/^version = //p' "$src/version.config")
  # Debian's +dfsg source has no tsl/ folder (Timescale License code is not free software
  # by Debian's rules), so this is the Apache-2 edition, as Debian's own package is.
  local apache_only=OFF
  [[ -d "$src/tsl" ]] || apache_only=ON
  step "TimescaleDB $version: configuring (cmake, APACHE_ONLY=$apache_only, PostgreSQL $PG_MAJOR)" "$blog"
  (cd "$src" && BUILD_DIR=build BUILD_FORCE_REMOVE=true ./bootstrap \
    -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$PG_BIN/pg_config" -DAPACHE_ONLY="$apache_only" \
    -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DSEND_TELEMETRY_DEFAULT=OFF) >>"$blog" 2>&1
  step "TimescaleDB $version: compiling (make -j$(nproc))" "$blog"
  make -C "$src/build" -j"$(nproc)" >>"$blog" 2>&1
  step "TimescaleDB $version: installing into PostgreSQL $PG_MAJOR's directories (make install)" "$blog"
  "${SUDO[@]}" make -C "$src/build" install >>"$blog" 2>&1
}

pg_render_config() {
  local base=$1
  cat >"$base/data/stack.conf" <<EOF
# Rendered by deploy/local/stack.sh on every 'up' (included from postgresql.conf).
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$base/run'
unix_socket_permissions = 0700
max_connections = 200
shared_buffers = 256MB
shared_preload_libraries = 'timescaledb'
max_worker_processes = 16
timescaledb.max_background_workers = 8
timescaledb.telemetry_level = off
# The TimescaleDB built from Debian's source is the Apache-2 edition (no tsl/ code):
# 'timescale' would ask for the TSL module, which is not there.
timescaledb.license = 'apache'
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
}

postgres_start() {
  local base pid
  base=$(pg_base)
  if pid=$(pid_of "$PG_PID" "$base/data"); then
    already_running PostgreSQL "$pid" "$(pg_conf_port)" "$PG_PORT" PG_PORT
    return 0
  fi
  rm -f "$PG_PID"
  local user
  user=$(pg_user)
  [[ $base == "$STACK/pg" ]] ||
    note "PostgreSQL: user '$user' cannot reach $STACK (a parent folder is not searchable): data in $base"
  mkdir -p "$base/data" "$base/run"
  chmod 0700 "$base/data" "$base/run"
  if [[ $EUID -eq 0 ]]; then chown "$user:" "$base" "$base/data" "$base/run"; fi
  if [[ ! -f "$base/data/PG_VERSION" ]]; then
    step "PostgreSQL: creating the cluster (initdb, once)" "$LOGS/postgres-initdb.log"
    as_pg "$PG_BIN/initdb" -D "$base/data" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$LOGS/postgres-initdb.log" 2>&1
    echo "include_if_exists = 'stack.conf'" >>"$base/data/postgresql.conf"
  fi
  # local (socket) connections are trusted: the socket is in a 0700 folder of pg_user.
  pg_render_config "$base"
  if [[ $EUID -eq 0 ]]; then chown "$user:" "$base/data/stack.conf"; fi
  step "PostgreSQL $PG_MAJOR: starting on 127.0.0.1:$PG_PORT" "$LOGS/postgres.log"
  port_open "$PG_PORT" && port_taken "$PG_PORT" "PG_PORT (a system PostgreSQL cluster?)"
  local launch=()
  if [[ $EUID -eq 0 ]]; then launch=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
  # The log file is opened here, by the caller, so it can sit in .stack/logs either way.
  (cd / && exec setsid "${launch[@]}" "$PG_BIN/postgres" -D "$base/data") \
    >>"$LOGS/postgres.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PG_PID"
  note "PostgreSQL: pid $!; log .stack/logs/postgres.log"
}

pg_psql() { # psql as the cluster's superuser over its socket
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(pg_base)/run" -p "$PG_PORT" -U postgres "$@"
}

postgres_wait() {
  local base
  base=$(pg_base)
  step "PostgreSQL: waiting until it accepts connections" "$LOGS/postgres.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    pid_of "$PG_PID" "$base/data" >/dev/null || die "the postgres process exited"
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    ((SECONDS < deadline)) || die "PostgreSQL did not accept connections within ${START_TIMEOUT}s"
    sleep 0.5
  done
  step "PostgreSQL: role '$DB_USER', database '$DB_NAME', extension timescaledb" "$LOGS/postgres-setup.log"
  # SUPERUSER: a throwaway local cluster where the tests and migrations create schemas and
  # the timescaledb extension (CREATE EXTENSION needs superuser or the database owner
  # with a trusted extension; timescaledb is not trusted).
  pg_psql -d postgres >"$LOGS/postgres-setup.log" 2>&1 <<EOF
SELECT format('CREATE ROLE %I LOGIN SUPERUSER PASSWORD %L', '$DB_USER', '$DB_PASSWORD')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
\connect $DB_NAME
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS timescaledb;
EOF
  local v
  v=$(PGPASSWORD=$DB_PASSWORD "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d "$DB_NAME" \
    -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'" 2>>"$LOGS/postgres-setup.log") ||
    die "cannot log in as $DB_USER over TCP with its password"
  [[ -n $v ]] || die "the timescaledb extension is not in database $DB_NAME"
  note "PostgreSQL: ready (postgresql://$DB_USER:***@127.0.0.1:$PG_PORT/$DB_NAME, timescaledb $v)"
}

# ---------------------------------------------------------------- commands
# One stack.sh up/down at a time. The servers are started with fd 9 closed (9>&-), so that
# they never hold this lock.
lock() {
  mkdir -p "$RUN"
  exec 9>"$RUN/stack.lock"
  if ! flock -n 9; then
    say "waiting for another stack.sh up/down to finish (lock .stack/run/stack.lock)"
    flock -w 900 9 || die "another stack.sh still holds .stack/run/stack.lock after 900s"
  fi
}

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$CACHE" "$STACK" "$LOGS" "$RUN"
  chmod 0755 "$CACHE" "$STACK"
  lock
  say "Local stack in $STACK"
  step "checking what is installed" "$LOGS/apt.log"
  kafka_install
  mosquitto_install
  postgres_install
  # Start all three, then wait: the JVM starts while the others come up.
  step "starting the servers"
  kafka_start
  mosquitto_start
  postgres_start
  mosquitto_wait
  postgres_wait
  kafka_wait
  say "Stack is up in $((SECONDS - t0))s"
  cmd_status
}

cmd_down() {
  if [[ ! -d $RUN ]]; then
    say "Nothing of the stack was running"
    return 0
  fi
  lock
  local pid any=0
  STEP="stopping Kafka"
  if pid=$(pid_of "$KAFKA_PID" "$KAFKA_CONF"); then
    say "Kafka: stopping pid $pid (SIGTERM: controlled shutdown)"
    stop_pid kafka "$pid" TERM
    any=1
  fi
  rm -f "$KAFKA_PID"
  STEP="stopping Mosquitto"
  if pid=$(pid_of "$MQTT_PID" "$MQTT_CONF"); then
    say "Mosquitto: stopping pid $pid (SIGTERM)"
    stop_pid mosquitto "$pid" TERM
    any=1
  fi
  rm -f "$MQTT_PID"
  STEP="stopping PostgreSQL"
  if pid=$(pid_of "$PG_PID" "$(pg_base)/data"); then
    # SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for every client to leave);
    # SIGQUIT is "immediate". Its backends end with the postmaster.
    say "PostgreSQL: stopping pid $pid (SIGINT: fast shutdown)"
    stop_pid postgres "$pid" INT QUIT
    any=1
  fi
  rm -f "$PG_PID"
  if [[ $any -eq 0 ]]; then say "Nothing of the stack was running"; else say "Stack stopped"; fi
}

cmd_status() {
  local pid
  if pid=$(pid_of "$KAFKA_PID" "$KAFKA_CONF"); then
    printf '%-10s running  pid %-8s 127.0.0.1:%s\n' kafka "$pid" "$(kafka_conf_port)"
  else
    printf '%-10s stopped\n' kafka
  fi
  if pid=$(pid_of "$MQTT_PID" "$MQTT_CONF"); then
    printf '%-10s running  pid %-8s 127.0.0.1:%s\n' mosquitto "$pid" "$(mqtt_conf_port)"
  else
    printf '%-10s stopped\n' mosquitto
  fi
  if pid=$(pid_of "$PG_PID" "$(pg_base)/data"); then
    printf '%-10s running  pid %-8s 127.0.0.1:%s\n' postgres "$pid" "$(pg_conf_port)"
  else
    printf '%-10s stopped\n' postgres
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    echo "usage: bash deploy/local/stack.sh up|down|status" >&2
    exit 2
    ;;
esac
