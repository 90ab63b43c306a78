# Sourced by stack.sh, install.sh and kafka-tool.sh: where the local stack keeps its files,
# its ports and settings, the output and failure helpers, and the one Java command line that
# runs a class from the Kafka jars. Defines, runs nothing.
# The variables are read by the scripts that source this file, hence SC2034 (unused) off.
# shellcheck shell=bash disable=SC2034

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
# The name failures are reported under: the script that was run (stack.sh, install.sh).
PROG=$(basename "$0")
# Downloads and builds (jars, Maven repository, TimescaleDB source) are cached in .stack/ and
# shared; the servers' state (configs, data, logs, pids) lives in STACK_DIR, .stack/ unless
# set: a second stack on other ports (the fault tests run one) keeps its own state.
CACHE="$ROOT/.stack"
STACK=${STACK_DIR:-$CACHE}
LOGS="$STACK/logs"
RUN="$STACK/run"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
# The second Kafka listener: SASL_SSL (SCRAM-SHA-512 over TLS 1.2+), see "Kafka: SASL_SSL" in
# stack.sh. KAFKA_PORT stays PLAINTEXT until the clients move to this one.
KAFKA_SASL_PORT=${KAFKA_SASL_PORT:-9094}
MQTT_PORT=${MQTT_PORT:-1883}
PG_PORT=${PG_PORT:-5432}
PG_MAJOR=${PG_MAJOR:-15}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}
KEYCLOAK_PORT=${KEYCLOAK_PORT:-8180}
KEYCLOAK_MANAGEMENT_PORT=${KEYCLOAK_MANAGEMENT_PORT:-9190}
# off: plain HTTP on 127.0.0.1 (for now); on: HTTPS with the local CA's certificate for Keycloak.
KEYCLOAK_TLS=${KEYCLOAK_TLS:-off}
START_TIMEOUT=${STACK_START_TIMEOUT:-120}
STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-30}

# The application's database: local throwaway credentials, the defaults of DATABASE_URL.
DB_NAME=sensors
DB_USER=sensors
DB_PASSWORD=sensors

KAFKA_DIR="$STACK/kafka"
# The jars (install.sh puts them there); settable so that a test of a private stack can use
# another checkout's.
KAFKA_LIBS=${KAFKA_LIBS:-$CACHE/kafka/libs}
KAFKA_CONF="$KAFKA_DIR/server.properties"
KAFKA_DATA="$KAFKA_DIR/data"
# The SASL_SSL listener's certificate and key (certs.sh's), and the broker's copy of them as
# one PEM file (its keystore, 0600).
KAFKA_TLS_CERT="$STACK/certs/kafka.crt"
KAFKA_TLS_KEY="$STACK/certs/kafka.key"
KAFKA_KEYSTORE="$KAFKA_DIR/tls/kafka-keystore.pem"
# The SCRAM users of the SASL_SSL listener, one per service, `admin` (a super user: set-up and
# operators) and `operator` (reads every pipeline topic); each one's password is generated once
# into SECRETS/kafka-<user>.password (0600).
KAFKA_USERS=(admin ingest validate enrich store operator admin-api)

MQTT_DIR="$STACK/mosquitto"
MQTT_CONF="$MQTT_DIR/mosquitto.conf"
# The one Mosquitto config, also mounted by docker-compose.yml; stack.sh renders MQTT_CONF
# from it, changing only what must differ for a local process.
MQTT_SHARED_CONF="$(cd "$SCRIPT_DIR/../mosquitto" && pwd)/mosquitto.conf"

# ---------------------------------------------------------------- MQTT over TLS
# The second Mosquitto listener, 127.0.0.1:MQTT_TLS_PORT: TLS, and every client a user of the
# dynamic security plugin (its accounts and roles in MQTT_DYNSEC, which the broker rewrites on
# each change). MQTT_PORT stays anonymous and plaintext until the clients move to this one.
MQTT_TLS_PORT=${MQTT_TLS_PORT:-8883}
# deploy/mosquitto/secure-listener.conf: the listener's block, appended to MQTT_CONF.
MQTT_SHARED_TLS_CONF="$(cd "$SCRIPT_DIR/../mosquitto" && pwd)/secure-listener.conf"
MQTT_DYNSEC="$MQTT_DIR/dynamic-security.json"
# The server certificate, its key and the CA that signed it (certs.sh's files, in a 0700
# folder), and where the broker reads its copies of the first two (MQTT_TLS_DIR, owned by the
# user it runs as: it reads them after dropping root's privileges).
MQTT_TLS_CERT="$STACK/certs/mosquitto.crt"
MQTT_TLS_KEY="$STACK/certs/mosquitto.key"
MQTT_TLS_CA="$STACK/certs/ca.crt"
MQTT_TLS_DIR="$MQTT_DIR/tls"
# Generated local secrets (0600, in a 0700 folder; never committed): the broker's admin
# account (it alone may use $CONTROL/dynamic-security), ingest's account, and one file per
# device that `python -m tools.credentials device` registered (secrets/devices/).
SECRETS="$STACK/secrets"
MQTT_ADMIN_USER=admin
MQTT_ADMIN_PASSWORD_FILE="$SECRETS/mqtt-admin.password"
MQTT_INGEST_USER=ingest
MQTT_INGEST_PASSWORD_FILE="$SECRETS/mqtt-ingest.password"

# Where the distribution put the plugin (Debian: the multiarch folder; the image: /usr/lib).
mosquitto_dynsec_plugin() {
  local p
  for p in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so; do
    if [[ -f $p ]]; then
      echo "$p"
      return 0
    fi
  done
  echo /usr/lib/mosquitto_dynamic_security.so
}

PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"

# Keycloak, the identity provider: the distribution from Maven Central, unpacked and built
# (kc.sh build) once in .stack/keycloak-<version>; its own state (an H2 file database) in
# STACK_DIR/keycloak; the realm it imports at its first start is deploy/keycloak/realm.json.
KEYCLOAK_VERSION=26.4.7
KEYCLOAK_HOME="$CACHE/keycloak-$KEYCLOAK_VERSION"
KEYCLOAK_DIR="$STACK/keycloak"
KEYCLOAK_CONF="$KEYCLOAK_DIR/keycloak.conf"
# The local CA and Keycloak's server certificate (PEM), for KEYCLOAK_TLS=on.
STACK_CA="$STACK/certs/ca.crt"
KEYCLOAK_CERT="$STACK/certs/keycloak.crt"
KEYCLOAK_KEY="$STACK/certs/keycloak.key"
KEYCLOAK_REALM=sensor-pipeline
KEYCLOAK_REALM_FILE="$(cd "$SCRIPT_DIR/../keycloak" && pwd)/realm.json"
# What `kc.sh build` bakes into the distribution (build options); changing it rebuilds.
KEYCLOAK_BUILD_OPTIONS="--db=dev-file --health-enabled=true"
# The generated throwaway local secrets (client secrets, passwords), one file each, 0600, in
# SECRETS (above).
KEYCLOAK_SECRETS="$SECRETS/keycloak"
# PG_BASE (data dir, socket dir) is .stack/pg unless the OS user `postgres` cannot reach it:
# see pg_base() in stack.sh.

SUDO=()
if [[ $EUID -ne 0 ]]; then SUDO=(sudo); fi

mosquitto_bin() { command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto; }

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
    echo "$PROG: FAILED at step: $STEP"
    [[ $# -gt 0 ]] && echo "$PROG: $*"
    if [[ -n $STEP_LOG ]]; then
      echo "$PROG: read the log: $STEP_LOG"
      if [[ -f $STEP_LOG ]]; then
        echo "---- last lines of $STEP_LOG ----"
        tail -n 15 "$STEP_LOG" || true
        echo "----"
      fi
    fi
  } >&2
  exit 1
}

# Installed by each script that runs steps: trap 'on_error $? "$BASH_COMMAND"' ERR
on_error() {
  local rc=$1 cmd=$2
  trap - ERR
  die "command failed (exit $rc): $cmd"
}

# ---------------------------------------------------------------- Java
# kafka_java_cmd HEAP_OPTS LOG4J_FILE: sets KAFKA_JAVA to the command line that runs a class
# from the Kafka jars (append JVM options, then the class and its arguments). Every Java
# process of the stack starts from it: the broker, StorageTool, the readiness probe and
# kafka-tool.sh. An array rather than a function, so that callers can put setsid or exec
# in front of it. LOG4J_FILE is one of deploy/local/kafka/*.properties.
KAFKA_JAVA=()
kafka_java_cmd() {
  local heap_opts=$1 log4j=$2
  # shellcheck disable=SC2206  # heap options are a word list on purpose
  KAFKA_JAVA=(java $heap_opts -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/$log4j" -cp "$KAFKA_LIBS/*")
}

# java_major JAVA: the major version of that java binary (0 if it does not run).
java_major() {
  "$1" -version 2>&1 | awk -F'"' '/version/ { split($2, a, "."); print a[1] + 0; exit }' || echo 0
}

# keycloak_java_home: prints the JDK Keycloak 26 runs on (Java 21 or newer): KEYCLOAK_JAVA_HOME
# if set, else JAVA_HOME or the `java` on PATH if new enough, else the newest JDK in
# /usr/lib/jvm (the machine's default Java may be 17, which Kafka is content with).
keycloak_java_home() {
  local home best="" best_v=0 v
  if [[ -n ${KEYCLOAK_JAVA_HOME:-} ]]; then
    echo "$KEYCLOAK_JAVA_HOME"
    return 0
  fi
  for home in ${JAVA_HOME:+"$JAVA_HOME"} "$(dirname "$(dirname "$(readlink -f "$(command -v java || echo /nonexistent)")")")" /usr/lib/jvm/*; do
    [[ -x $home/bin/java ]] || continue
    v=$(java_major "$home/bin/java")
    if ((v > best_v)); then best=$home best_v=$v; fi
  done
  ((best_v >= 21)) || return 1
  echo "$best"
}
