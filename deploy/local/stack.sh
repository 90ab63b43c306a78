#!/usr/bin/env bash
# The local server stack of the sensor pipeline, as plain processes (no containers):
#   Apache Kafka 4 (KRaft, one combined broker+controller), Mosquitto 2 (MQTT v5),
#   PostgreSQL 15 + TimescaleDB, Keycloak 26 (the identity provider, realm sensor-pipeline).
#
#   bash deploy/local/stack.sh up|down|status      (make up / make down / make status)
#   bash deploy/local/stack.sh up|down NAME...     (only those servers: kafka mosquitto postgres keycloak)
#   bash deploy/local/stack.sh rotate-certs [--ca] (make rotate-certs; see certs.sh)
#
# `up` first runs the cached installs of install.sh, then starts and waits for each server;
# this file only supervises them. Everything it makes (jars, builds, data, logs, pid files,
# rendered configs) lives in <repo>/.stack/, which git ignores; servers listen on 127.0.0.1
# only. Settings (environment, with defaults):
#   KAFKA_PORT=9092  KAFKA_SASL_PORT=9094  KAFKA_CONTROLLER_PORT=9093
#   MQTT_PORT=1883  MQTT_TLS_PORT=8883  MQTT_LOG_DENIALS=off (on: ACL denials in mosquitto.log)
#   PG_PORT=5432  PG_MAJOR=15  PG_PLAINTEXT=off (on: plain TCP for the owner role too; development)
#   KEYCLOAK_PORT=8180  KEYCLOAK_MANAGEMENT_PORT=9190  KEYCLOAK_JAVA_HOME=(a JDK 21+, found if unset)
#   KEYCLOAK_TLS=off (on: HTTPS with STACK_DIR/certs/keycloak.crt and .key)
#   KAFKA_HEAP_OPTS="-Xmx512m -Xms256m"  STACK_START_TIMEOUT=120 (seconds, per server)
#   STACK_DIR=<repo>/.stack (the servers' state; downloads and builds stay in .stack/)
# See deploy/local/README.md.
set -Eeuo pipefail

# shellcheck source=deploy/local/install.sh
. "$(dirname "${BASH_SOURCE[0]}")/install.sh"
# shellcheck source=deploy/local/certs.sh
. "$(dirname "${BASH_SOURCE[0]}")/certs.sh"
trap 'on_error $? "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------- the servers
# One row per server; up, down and status go over them in this order, except that up waits
# for the first (Kafka) last: its JVM starts while the others come up (Keycloak's too). Each NAME has
# NAME_start (render its config, launch it in the background, write RUN/NAME.pid),
# NAME_wait (until it answers), NAME_conf_port (the port its rendered config says) and a
# line in server_marker. The stop signals are sent in turn, STOP_TIMEOUT seconds apart,
# then SIGKILL: SIGINT is PostgreSQL's "fast" shutdown (SIGTERM would wait for every client
# to leave), SIGQUIT its "immediate" one; its backends end with the postmaster.
SERVERS=()
declare -A LABEL PORT_VAR STOP_SIGNALS STOP_HOW
read_servers() {
  local name label port_var signals how
  while read -r name label port_var signals how; do
    SERVERS+=("$name")
    LABEL[$name]=$label
    PORT_VAR[$name]=$port_var
    STOP_SIGNALS[$name]=${signals//,/ }
    STOP_HOW[$name]=$how
  done
}
# name     label       port var    stop signals  what the first signal does
read_servers <<'EOF'
kafka      Kafka       KAFKA_PORT  TERM          SIGTERM: controlled shutdown
mosquitto  Mosquitto   MQTT_PORT   TERM          SIGTERM
postgres   PostgreSQL  PG_PORT     INT,QUIT      SIGINT: fast shutdown
keycloak   Keycloak    KEYCLOAK_PORT  TERM       SIGTERM: graceful shutdown
EOF

# server_marker NAME: what the server's command line contains, so that a recycled pid is
# never taken for ours.
server_marker() {
  case $1 in
    kafka) echo "$KAFKA_CONF" ;;
    mosquitto) echo "$MQTT_CONF" ;;
    postgres) echo "$(pg_base)/data" ;;
    keycloak) echo "$KEYCLOAK_CONF" ;;
  esac
}

server_pid() { pid_of "$RUN/$1.pid" "$(server_marker "$1")"; } # NAME: its pid if it runs

# server_start NAME: starts the server unless it runs already (on the port asked for).
server_start() {
  local name=$1 pid var=${PORT_VAR[$1]}
  if pid=$(server_pid "$name"); then
    already_running "${LABEL[$name]}" "$pid" "$("${name}_conf_port")" "${!var}" "$var"
    return 0
  fi
  rm -f "$RUN/$name.pid"
  "${name}_start"
  # The pid written is the child's, which may not have exec'd the server yet: until it has, its
  # command line is this script's, and server_pid (which checks the server's marker in it)
  # would take a server that is starting for one that exited. Wait for the exec (or the exit).
  local i
  for ((i = 0; i < 50; i++)); do
    server_pid "$name" >/dev/null && return 0
    pid=$(head -n 1 "$RUN/$name.pid" 2>/dev/null | tr -dc '0-9')
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
}

# server_stop NAME: stops the server if it runs; returns 1 if it was not running.
server_stop() {
  local name=$1 pid was_running=1
  STEP="stopping ${LABEL[$name]}"
  if pid=$(server_pid "$name"); then
    say "${LABEL[$name]}: stopping pid $pid (${STOP_HOW[$name]})"
    # shellcheck disable=SC2086  # the signals are a word list
    stop_pid "$name" "$pid" ${STOP_SIGNALS[$name]}
    was_running=0
  fi
  rm -f "$RUN/$name.pid"
  return "$was_running"
}

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

# ---------------------------------------------------------------- Kafka
# The port a running server was started with, read back from its rendered config (as for
# the others below).
kafka_conf_port() { sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\).*|\1|p' "$KAFKA_CONF" 2>/dev/null; }

kafka_render_config() {
  cat >"$KAFKA_CONF" <<EOC
# Rendered by deploy/local/stack.sh on every 'up'; edits here are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
# SASL_SSL: SCRAM-SHA-512 users (made by kafka_accounts after the start) over TLS 1.2 or
# 1.3, with the local CA's certificate for kafka (one PEM file: key and certificate).
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_KEYSTORE
listener.name.sasl_ssl.ssl.protocol=TLSv1.3
listener.name.sasl_ssl.ssl.enabled.protocols=TLSv1.3,TLSv1.2
listener.name.sasl_ssl.ssl.client.auth=none
# Every request is authorized by the ACLs of kafka_accounts; no ACL means refused.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# User:ANONYMOUS is every client of the PLAINTEXT and CONTROLLER listeners: a super user only
# for now, so that the services and tests, which still connect in plaintext, keep working.
# ANONYMOUS leaves super.users when the clients switch to SASL_SSL (the controller listener
# then gets a principal of its own); User:admin stays, for set-up and operators.
super.users=User:ANONYMOUS;User:admin
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
EOC
}

kafka_start() {
  mkdir -p "$KAFKA_DATA"
  kafka_keystore
  kafka_render_config
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    step "Kafka: formatting the KRaft storage (once)" "$LOGS/kafka-format.log"
    kafka_java_cmd -Xmx256m tools-log4j2.properties
    [[ -f "$KAFKA_DIR/cluster.id" ]] ||
      "${KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka-format.log" >"$KAFKA_DIR/cluster.id"
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --config "$KAFKA_CONF" \
      --cluster-id "$(cat "$KAFKA_DIR/cluster.id")" --ignore-formatted >>"$LOGS/kafka-format.log" 2>&1
  fi
  step "Kafka: starting the broker on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)" \
    "$LOGS/kafka.log"
  local p
  for p in "$KAFKA_PORT" "$KAFKA_SASL_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && port_taken "$p" "KAFKA_PORT / KAFKA_SASL_PORT / KAFKA_CONTROLLER_PORT"
  done
  kafka_java_cmd "$KAFKA_HEAP_OPTS" log4j2.properties
  setsid "${KAFKA_JAVA[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Dkafka.logs.dir="$LOGS" kafka.Kafka "$KAFKA_CONF" \
    >"$LOGS/kafka.stdout.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/kafka.pid"
  note "Kafka: pid $!; log .stack/logs/kafka.log (JVM output: .stack/logs/kafka.stdout.log)"
}

kafka_wait() {
  step "Kafka: waiting until the broker answers an ApiVersions request" "$LOGS/kafka.log"
  kafka_java_cmd -Xmx128m tools-log4j2.properties
  local deadline=$((SECONDS + START_TIMEOUT)) out
  while ((SECONDS < deadline)); do
    if ! server_pid kafka >/dev/null; then
      # a JVM that could not start says why on its own output, not in kafka.log
      [[ -s "$LOGS/kafka.stdout.log" ]] && STEP_LOG="$LOGS/kafka.stdout.log"
      die "the Kafka process exited (logs: .stack/logs/kafka.log, .stack/logs/kafka.stdout.log)"
    fi
    if port_open "$KAFKA_PORT" &&
      out=$(timeout 30 "${KAFKA_JAVA[@]}" org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" 2>/dev/null) && [[ $out == *"Produce("* ]]; then
      note "Kafka: ready"
      kafka_accounts
      return 0
    fi
    sleep 1
  done
  die "Kafka did not answer on 127.0.0.1:$KAFKA_PORT within ${START_TIMEOUT}s"
}

# ---------------------------------------------------------------- Kafka: SASL_SSL and ACLs
# kafka_keystore: the broker's keystore, the key and certificate of certs.sh in one PEM file
# (the PKCS#8 key first), taken afresh at each start, so a restart after rotate-certs serves
# the new ones.
kafka_keystore() {
  [[ -f $KAFKA_TLS_CERT && -f $KAFKA_TLS_KEY ]] ||
    die "no Kafka certificate in $(dirname "$KAFKA_TLS_CERT") (certs.sh makes it; run 'make up')"
  mkdir -p "$(dirname "$KAFKA_KEYSTORE")"
  chmod 0700 "$(dirname "$KAFKA_KEYSTORE")"
  (umask 077 && cat "$KAFKA_TLS_KEY" "$KAFKA_TLS_CERT" >"$KAFKA_KEYSTORE.tmp")
  mv "$KAFKA_KEYSTORE.tmp" "$KAFKA_KEYSTORE"
}

# The ACLs of the SCRAM users (User:admin needs none: a super user). One row, one AclCommand:
# the user is allowed each operation on each resource of the row. Pattern `literal` matches
# the name exactly, `prefixed` every name that starts with it. Topics and groups are literal
# (a prefixed `sensor-data` would also match sensor-data-validated); transactional ids are
# prefixed, as a stage's are "<group>-<host>-<port>" (libs/common/service.py); the operator's
# own consumer groups are those whose name starts with "operator". A `topic,group` row: the
# first name is the topic, the second the group. The tests' private topics
# (t-<id>-sensor-data...) match none of these rows: they use the PLAINTEXT listener for now.
# user      pattern   resource          operations      names
KAFKA_ACLS=$(
  cat <<'EOF'
ingest      literal   topic             WRITE           sensor-data sensor-data-errors
validate    literal   topic,group       READ            sensor-data validate
validate    literal   topic             WRITE           sensor-data-validated sensor-data-errors
validate    prefixed  transactional-id  WRITE,DESCRIBE  validate-
enrich      literal   topic,group       READ            sensor-data-validated enrich
enrich      literal   topic             WRITE           sensor-data-enriched sensor-data-errors
enrich      prefixed  transactional-id  WRITE,DESCRIBE  enrich-
store       literal   topic,group       READ            sensor-data-enriched store
store       literal   topic             WRITE           sensor-data-errors
store       prefixed  transactional-id  WRITE,DESCRIBE  store-
operator    literal   topic             READ,DESCRIBE   sensor-data sensor-data-validated sensor-data-enriched sensor-data-errors
operator    literal   group             DESCRIBE        validate enrich store
operator    prefixed  group             READ,DESCRIBE   operator
admin-api   literal   topic,group       READ,DESCRIBE   sensor-data-errors admin-api
admin-api   literal   topic             WRITE,DESCRIBE  sensor-data sensor-data-validated sensor-data-enriched
EOF
)

kafka_password_file() { echo "$SECRETS/kafka-$1.password"; } # USER

# kafka_acl_args ROW: sets KAFKA_ACL_ARGS to the AclCommand arguments of one KAFKA_ACLS row.
KAFKA_ACL_ARGS=()
kafka_acl_args() {
  local user pattern resources operations names topic group op n
  read -r user pattern resources operations names <<<"$1"
  KAFKA_ACL_ARGS=(--add --allow-principal "User:$user" --resource-pattern-type "$pattern")
  for op in ${operations//,/ }; do KAFKA_ACL_ARGS+=(--operation "$op"); done
  if [[ $resources == topic,group ]]; then
    read -r topic group <<<"$names"
    KAFKA_ACL_ARGS+=(--topic "$topic" --group "$group")
    return 0
  fi
  for n in $names; do KAFKA_ACL_ARGS+=("--$resources" "$n"); done
}

# kafka_accounts: the SCRAM users of KAFKA_USERS (passwords generated once into SECRETS) and
# the ACLs of KAFKA_ACLS, set over the PLAINTEXT listener (its principal is a super user for
# now) with Kafka's own ConfigCommand and AclCommand. Both set what is there already without
# harm; a marker (the hash of the passwords, the ACL table and the storage's meta.properties,
# so that a newly formatted cluster counts as new) lets a later `up` skip their JVMs.
kafka_accounts() {
  if ! grep -q '^listener.name.sasl_ssl.' "$KAFKA_CONF" 2>/dev/null; then
    # A broker started by an older stack.sh, before the SASL_SSL listener existed: left running.
    note "Kafka: running without the SASL_SSL listener (started before it existed): 'make down' and 'make up' add it"
    return 0
  fi
  step "Kafka: SCRAM users ${KAFKA_USERS[*]} and their ACLs" "$LOGS/kafka-accounts.log"
  mkdir -p "$SECRETS"
  chmod 0700 "$SECRETS"
  local user file want marker="$KAFKA_DIR/accounts.applied"
  for user in "${KAFKA_USERS[@]}"; do
    file=$(kafka_password_file "$user")
    new_secret "$file" >/dev/null
    chmod 0600 "$file"
  done
  want=$({
    for user in "${KAFKA_USERS[@]}"; do
      printf '%s ' "$user"
      sha256sum <"$(kafka_password_file "$user")"
    done
    echo "$KAFKA_ACLS"
    cat "$KAFKA_DATA/meta.properties"
  } | sha256sum | cut -d' ' -f1)
  if [[ -f $marker && $(cat "$marker") == "$want" ]]; then
    note "Kafka: users and ACLs current; SASL_SSL on 127.0.0.1:$KAFKA_SASL_PORT"
    return 0
  fi
  kafka_java_cmd -Xmx128m tools-log4j2.properties
  local bootstrap="127.0.0.1:$KAFKA_PORT" conf row
  : >"$LOGS/kafka-accounts.log"
  conf=$(mktemp "$KAFKA_DIR/.scram.XXXXXX")
  for user in "${KAFKA_USERS[@]}"; do
    # The password goes in a 0600 file (mktemp's), never on a command line.
    printf 'SCRAM-SHA-512=iterations=8192,password=%s\n' \
      "$(cat "$(kafka_password_file "$user")")" >"$conf"
    "${KAFKA_JAVA[@]}" org.apache.kafka.tools.ConfigCommand --bootstrap-server "$bootstrap" \
      --alter --entity-type users --entity-name "$user" --add-config-file "$conf" \
      >>"$LOGS/kafka-accounts.log" 2>&1 || {
      rm -f "$conf"
      die "cannot set the SCRAM credential of Kafka user $user"
    }
  done
  rm -f "$conf"
  while read -r row; do
    [[ -n $row ]] || continue
    kafka_acl_args "$row"
    "${KAFKA_JAVA[@]}" org.apache.kafka.tools.AclCommand --bootstrap-server "$bootstrap" \
      "${KAFKA_ACL_ARGS[@]}" >>"$LOGS/kafka-accounts.log" 2>&1 ||
      die "cannot add the Kafka ACLs: $row"
  done <<<"$KAFKA_ACLS"
  echo "$want" >"$marker"
  note "Kafka: SASL_SSL on 127.0.0.1:$KAFKA_SASL_PORT; users ${KAFKA_USERS[*]} (passwords in $SECRETS)"
}

# ---------------------------------------------------------------- Mosquitto
# The first listener (MQTT_PORT); the TLS one follows it.
mosquitto_conf_port() { sed -n 's|^listener \([0-9]*\) .*|\1|p' "$MQTT_CONF" 2>/dev/null | head -n 1; }

# mosquitto_render_config USER_LINE: MQTT_CONF from the shared config (MQTT_SHARED_CONF, the
# one docker-compose.yml mounts), with only what a local process needs otherwise: the
# listener on 127.0.0.1:MQTT_PORT, persistence and log under STACK_DIR, and the user to run
# as. Fails if the shared file has not exactly one of each line it replaces.
mosquitto_render_config() {
  local user_line=$1
  {
    echo "# Rendered by deploy/local/stack.sh on every 'up' from deploy/mosquitto/mosquitto.conf;"
    echo "# edits here are overwritten."
    [[ -n $user_line ]] && echo "$user_line"
    awk -v listener_line="listener $MQTT_PORT 127.0.0.1" \
      -v persistence_line="persistence_location $MQTT_DIR/data/" \
      -v log_line="log_dest file $LOGS/mosquitto.log" '
      $1 == "listener" { print listener_line; n[$1]++; next }
      $1 == "persistence_location" { print persistence_line; n[$1]++; next }
      $1 == "log_dest" { print log_line; n[$1]++; next }
      { print }
      END {
        if (n["listener"] != 1 || n["persistence_location"] != 1 || n["log_dest"] != 1) {
          print "expected one listener, persistence_location and log_dest line each" >"/dev/stderr"
          exit 3
        }
      }' "$MQTT_SHARED_CONF" &&
      mosquitto_render_denials_logging &&
      mosquitto_render_secure_listener
  } >"$MQTT_CONF.tmp" || {
    rm -f "$MQTT_CONF.tmp"
    die "cannot render $MQTT_CONF from $MQTT_SHARED_CONF"
  }
  mv "$MQTT_CONF.tmp" "$MQTT_CONF"
}

# mosquitto_render_denials_logging: with MQTT_LOG_DENIALS=on, the log types that show the ACL's
# denials to the audit collector (python -m tools.audit_collector): Mosquitto 2.0.11 writes a
# denied PUBLISH, and the CONNACK of a refused login, only at `debug`, and a granted
# subscription only at `subscribe` (a denied one is the SUBSCRIBE without it). Off by default:
# debug also writes about four lines per message delivered (measured: 2.2x the broker's CPU per
# QoS 1 message, about 240 bytes of log each, and the log is not rotated); refused logins are
# in the log either way (docs/security.md, "Audit log").
mosquitto_render_denials_logging() {
  case ${MQTT_LOG_DENIALS:-off} in
    on) printf '%s\n' "# MQTT_LOG_DENIALS=on: ACL denials for the audit collector" \
      "log_type debug" "log_type subscribe" ;;
    off) ;;
    *) die "MQTT_LOG_DENIALS must be on or off, not '$MQTT_LOG_DENIALS'" ;;
  esac
}

mosquitto_start() {
  step "Mosquitto: starting on 127.0.0.1:$MQTT_PORT" "$LOGS/mosquitto.log"
  port_open "$MQTT_PORT" && port_taken "$MQTT_PORT" "MQTT_PORT (a system mosquitto service?)"
  port_open "$MQTT_TLS_PORT" && port_taken "$MQTT_TLS_PORT" "MQTT_TLS_PORT"
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
  mosquitto_secure_prepare "$run_as"
  mosquitto_render_config "$user_line"
  # Backgrounded rather than -d (daemon), so that its pid is known whoever it runs as.
  setsid "$(mosquitto_bin)" -c "$MQTT_CONF" >>"$LOGS/mosquitto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/mosquitto.pid"
  note "Mosquitto: pid $!${run_as:+, as user $run_as}; log .stack/logs/mosquitto.log"
}

mosquitto_wait() {
  step "Mosquitto: waiting until it answers MQTT v5" "$LOGS/mosquitto.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    server_pid mosquitto >/dev/null || die "the mosquitto process exited"
    # shellcheck disable=SC2016  # $SYS is an MQTT topic, not a variable
    if port_open "$MQTT_PORT" &&
      timeout 10 mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -V mqttv5 -i "stack-sh-probe-$$" \
        -t '$SYS/broker/version' -C 1 -W 5 >/dev/null 2>&1; then
      mosquitto_wait_tls
      note "Mosquitto: ready"
      return 0
    fi
    sleep 0.5
  done
  die "Mosquitto did not answer on 127.0.0.1:$MQTT_PORT within ${START_TIMEOUT}s"
}

# ---------------------------------------------------------------- Mosquitto: TLS and accounts
# mosquitto_render_secure_listener: deploy/mosquitto/secure-listener.conf to stdout, with the
# listener on 127.0.0.1:MQTT_TLS_PORT and the local paths of the certificate and key (the
# broker's copies), the plugin and the accounts file. Fails if the shared file has not exactly one of each line it replaces.
mosquitto_render_secure_listener() {
  echo "# ---- from deploy/mosquitto/secure-listener.conf"
  awk -v listener_line="listener $MQTT_TLS_PORT 127.0.0.1" \
    -v certfile_line="certfile $MQTT_TLS_DIR/mosquitto.crt" \
    -v keyfile_line="keyfile $MQTT_TLS_DIR/mosquitto.key" \
    -v plugin_line="plugin $(mosquitto_dynsec_plugin)" \
    -v dynsec_line="plugin_opt_config_file $MQTT_DYNSEC" '
    $1 == "listener" { print listener_line; n[$1]++; next }
    $1 == "certfile" { print certfile_line; n[$1]++; next }
    $1 == "keyfile" { print keyfile_line; n[$1]++; next }
    $1 == "plugin" { print plugin_line; n[$1]++; next }
    $1 == "plugin_opt_config_file" { print dynsec_line; n[$1]++; next }
    { print }
    END {
      split("listener certfile keyfile plugin plugin_opt_config_file", keys, " ")
      for (i in keys) if (n[keys[i]] != 1) {
        print "expected one " keys[i] " line in the TLS listener block" >"/dev/stderr"
        exit 3
      }
    }' "$MQTT_SHARED_TLS_CONF"
}

# new_secret FILE: FILE's content; a new random one first (0600) when there is no FILE.
new_secret() {
  if [[ ! -s $1 ]]; then
    (umask 077 && openssl rand -hex 24 >"$1.tmp" && mv "$1.tmp" "$1")
  fi
  cat "$1"
}

# dynsec_hash_of FILE KEY: a value ("password", "salt") of the one client of a file that
# `mosquitto_ctrl dynsec init` wrote.
dynsec_hash_of() { sed -n "s|^[[:space:]]*\"$2\":[[:space:]]*\"\\([^\"]*\\)\",*\$|\\1|p" "$1" | head -n 1; }

# mosquitto_dynsec_json TMP: the first accounts file, from the two that `mosquitto_ctrl dynsec
# init` wrote into TMP (admin.json, ingest.json: their password hashes).
mosquitto_dynsec_json() {
  local a=$1/$MQTT_ADMIN_USER.json i=$1/$MQTT_INGEST_USER.json
  # shellcheck disable=SC2016  # $CONTROL and $share are MQTT topics, not variables
  cat <<EOJ
{
  "defaultACLAccess": {"publishClientSend": false, "publishClientReceive": false,
                       "subscribe": false, "unsubscribe": true},
  "clients": [
    {"username": "$MQTT_ADMIN_USER", "textName": "the stack's admin account (tools.credentials)",
     "password": "$(dynsec_hash_of "$a" password)", "salt": "$(dynsec_hash_of "$a" salt)",
     "iterations": 101, "roles": [{"rolename": "admin"}]},
    {"username": "$MQTT_INGEST_USER", "textName": "services.ingest",
     "password": "$(dynsec_hash_of "$i" password)", "salt": "$(dynsec_hash_of "$i" salt)",
     "iterations": 101, "roles": [{"rolename": "ingest"}]}
  ],
  "groups": [{"groupname": "devices", "textName": "every device account", "roles": [],
              "clients": []}],
  "roles": [
    {"rolename": "admin", "textName": "administers the accounts, nothing else", "acls": [
      {"acltype": "publishClientSend", "topic": "\$CONTROL/dynamic-security/#", "allow": true},
      {"acltype": "publishClientReceive", "topic": "\$CONTROL/dynamic-security/#", "allow": true},
      {"acltype": "subscribePattern", "topic": "\$CONTROL/dynamic-security/#", "allow": true},
      {"acltype": "unsubscribePattern", "topic": "#", "allow": true}]},
    {"rolename": "ingest", "textName": "reads the readings through the shared subscription",
     "acls": [
      {"acltype": "subscribePattern", "topic": "\$share/ingest/sensors/+/readings", "allow": true},
      {"acltype": "publishClientReceive", "topic": "sensors/+/readings", "allow": true},
      {"acltype": "unsubscribePattern", "topic": "#", "allow": true}]}
  ]
}
EOJ
}

# mosquitto_dynsec_init_if_missing: MQTT_DYNSEC, once: the admin and ingest accounts (their
# generated passwords in SECRETS), the roles `admin` (the control topic only) and `ingest`
# (the shared subscription of the readings), the group `devices` (every device account joins
# it) and nothing allowed by default. From then on the broker owns the file (it rewrites it
# when tools.credentials adds or removes a device); a later `up` leaves it alone. The hashes
# (PBKDF2-SHA512) come from `mosquitto_ctrl dynsec init`, given each password on its standard
# input, never on its command line.
mosquitto_dynsec_init_if_missing() {
  mkdir -p "$SECRETS/devices"
  chmod 0700 "$SECRETS" "$SECRETS/devices"
  if [[ -f $MQTT_DYNSEC ]]; then
    [[ -s $MQTT_ADMIN_PASSWORD_FILE && -s $MQTT_INGEST_PASSWORD_FILE ]] ||
      die "$MQTT_DYNSEC exists but a password file of $SECRETS does not: remove the accounts file (broker stopped) to make them anew"
    return 0
  fi
  step "Mosquitto: the accounts of the TLS listener (once: $MQTT_DYNSEC)" "$LOGS/mosquitto-accounts.log"
  command -v mosquitto_ctrl >/dev/null || die "mosquitto_ctrl is missing (Debian: mosquitto-clients)"
  local tmp user file pw
  tmp=$(mktemp -d "$MQTT_DIR/.dynsec.XXXXXX")
  : >"$LOGS/mosquitto-accounts.log"
  for user in "$MQTT_ADMIN_USER" "$MQTT_INGEST_USER"; do
    file=$MQTT_ADMIN_PASSWORD_FILE
    [[ $user == "$MQTT_INGEST_USER" ]] && file=$MQTT_INGEST_PASSWORD_FILE
    pw=$(new_secret "$file")
    printf '%s\n%s\n' "$pw" "$pw" | mosquitto_ctrl dynsec init "$tmp/$user.json" "$user" \
      >>"$LOGS/mosquitto-accounts.log" 2>&1
    [[ -n $(dynsec_hash_of "$tmp/$user.json" password) && -n $(dynsec_hash_of "$tmp/$user.json" salt) ]] ||
      die "mosquitto_ctrl dynsec init wrote no password hash for $user"
  done
  (umask 077 && mosquitto_dynsec_json "$tmp" >"$tmp/all.json")
  mv "$tmp/all.json" "$MQTT_DYNSEC"
  rm -rf "$tmp"
  note "Mosquitto: accounts $MQTT_ADMIN_USER and $MQTT_INGEST_USER (passwords in $SECRETS)"
}

# mosquitto_tls_files: the broker's copies of its certificate and key (certs.sh made them, in
# a folder only root reads), taken afresh at each start, so a restart after rotate-certs
# serves the new ones.
mosquitto_tls_files() {
  [[ -f $MQTT_TLS_CERT && -f $MQTT_TLS_KEY && -f $MQTT_TLS_CA ]] ||
    die "no Mosquitto certificate in $(dirname "$MQTT_TLS_CERT") (certs.sh makes it; run 'make up')"
  mkdir -p "$MQTT_TLS_DIR"
  chmod 0700 "$MQTT_TLS_DIR"
  (umask 077 && cp "$MQTT_TLS_CERT" "$MQTT_TLS_DIR/mosquitto.crt.tmp" &&
    cp "$MQTT_TLS_KEY" "$MQTT_TLS_DIR/mosquitto.key.tmp")
  mv "$MQTT_TLS_DIR/mosquitto.crt.tmp" "$MQTT_TLS_DIR/mosquitto.crt"
  mv "$MQTT_TLS_DIR/mosquitto.key.tmp" "$MQTT_TLS_DIR/mosquitto.key"
}

# mosquitto_secure_prepare RUN_AS: what the TLS listener needs before the broker starts: its
# certificate and key and the accounts file, readable by the user mosquitto runs as (and the
# folder of the accounts file writable: the plugin saves a new copy beside it, then renames it).
mosquitto_secure_prepare() {
  local run_as=$1
  mosquitto_tls_files
  mosquitto_dynsec_init_if_missing
  chmod 0600 "$MQTT_DYNSEC"
  if [[ $run_as == mosquitto ]]; then
    chown -R mosquitto: "$MQTT_TLS_DIR"
    chown mosquitto: "$MQTT_DIR" "$MQTT_DYNSEC"
  fi
}

# mosquitto_wait_tls: the TLS listener answers with a certificate the CA vouches for, and
# refuses an anonymous client (CONNACK "not authorized": the plugin is in charge).
mosquitto_wait_tls() {
  local deadline=$((SECONDS + START_TIMEOUT)) out=""
  if ! grep -q '^plugin_opt_config_file ' "$MQTT_CONF" 2>/dev/null; then
    # A broker started by an older stack.sh, before the TLS listener existed: left running.
    note "Mosquitto: running without the TLS listener (started before it existed): 'make down' and 'make up' add it"
    return 0
  fi
  while ((SECONDS < deadline)); do
    out=$(timeout 10 mosquitto_pub -h 127.0.0.1 -p "$MQTT_TLS_PORT" --cafile "$MQTT_TLS_CA" \
      -V mqttv5 -i "stack-sh-tls-probe-$$" -t stack-sh-probe -m x 2>&1) || true
    if [[ $out == *"Not authorized"* ]]; then
      note "Mosquitto: TLS on 127.0.0.1:$MQTT_TLS_PORT, anonymous clients refused"
      return 0
    fi
    sleep 0.5
  done
  die "Mosquitto's TLS listener 127.0.0.1:$MQTT_TLS_PORT did not refuse an anonymous client within ${START_TIMEOUT}s (last answer: $out)"
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

postgres_conf_port() { sed -n 's|^port = \([0-9]*\)|\1|p' "$(pg_base)/data/stack.conf" 2>/dev/null; }

# The login users of the roles of least privilege (libs/common/migrations/0003_roles.sql):
# user NAME is a member of the group role pipeline_NAME. Their passwords are generated once
# into PG_SECRETS (0600, never committed); `python -m tools.credentials database --role NAME`
# prints a DSN with one.
PG_LOGINS=(migrator store enrich reader admin_api audit_writer)
PG_SECRETS="$STACK/secrets"
# on: pg_hba.conf lets the development owner $DB_USER in over plain TCP as well (a development
# switch, warned about by `up`); off (the default): TCP is TLS only, for every role.
PG_PLAINTEXT=${PG_PLAINTEXT:-off}
# Set by pg_configure when a file the running server reads on reload has changed.
PG_CHANGED=0

# pg_put SRC DEST: moves SRC over DEST (owned by the cluster's user, 0600) unless they are
# equal already; sets PG_CHANGED when it moved.
pg_put() {
  if cmp -s "$1" "$2"; then
    rm -f "$1"
    return 0
  fi
  chmod 0600 "$1"
  if [[ $EUID -eq 0 ]]; then chown "$(pg_user):" "$1"; fi
  mv "$1" "$2"
  PG_CHANGED=1
}

pg_render_config() {
  local base=$1
  cat >"$base/data/stack.conf.tmp" <<EOF
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
# user@database, the client's host and the SQLSTATE on every session's line: the audit
# collector (python -m tools.audit_collector) reads refused logins and statements from them.
# Failed logins are logged whatever log_connections says.
log_line_prefix = '%m [%p] %q%u@%d %h %e '
# TLS with the local CA's certificate for postgres (deploy/local/certs.sh), copied into the
# data folder because the cluster's user cannot read .stack/certs. Reloaded, not restarted,
# when it changes.
ssl = on
ssl_cert_file = 'stack-server.crt'
ssl_key_file = 'stack-server.key'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
EOF
  pg_put "$base/data/stack.conf.tmp" "$base/data/stack.conf"
}

# pg_render_hba BASE: who may connect how. The first matching line wins; a connection that
# matches none is refused ("no pg_hba.conf entry ... no encryption" for plain TCP).
pg_render_hba() {
  local base=$1
  cat >"$base/data/pg_hba.conf.tmp" <<EOF
# Rendered by deploy/local/stack.sh on every 'up'; edits here are overwritten.
# TYPE     DATABASE     USER     ADDRESS       METHOD
# The socket sits in a 0700 folder of the cluster's user: the set-up of 'up' as superuser.
local      all          all                    trust
local      replication  all                    trust
# TCP with TLS, a password by SCRAM: every role. Plain TCP matches no line: refused.
hostssl    all          all      127.0.0.1/32  scram-sha-256
hostssl    all          all      ::1/128       scram-sha-256
hostssl    replication  all      127.0.0.1/32  scram-sha-256
EOF
  if [[ $PG_PLAINTEXT == on ]]; then
    cat >>"$base/data/pg_hba.conf.tmp" <<EOF
# PG_PLAINTEXT=on, a development switch: plain TCP for the development owner $DB_USER only.
hostnossl  all          $DB_USER  127.0.0.1/32  scram-sha-256
hostnossl  all          $DB_USER  ::1/128       scram-sha-256
EOF
  fi
  pg_put "$base/data/pg_hba.conf.tmp" "$base/data/pg_hba.conf"
}

# pg_install_certs BASE: the server's certificate and key into the data folder.
pg_install_certs() {
  local base=$1 ext
  for ext in crt key; do
    [[ -f $CERTS/postgres.$ext ]] || die "$CERTS/postgres.$ext is missing (certs_ensure makes it)"
    cp "$CERTS/postgres.$ext" "$base/data/stack-server.$ext.tmp"
    pg_put "$base/data/stack-server.$ext.tmp" "$base/data/stack-server.$ext"
  done
}

# pg_configure BASE: every file of ours the server reads; PG_CHANGED says if one changed.
pg_configure() {
  PG_CHANGED=0
  pg_install_certs "$1"
  pg_render_config "$1"
  pg_render_hba "$1"
}

# pg_password USER: the login user's password, generated once into PG_SECRETS.
pg_password() {
  local file="$PG_SECRETS/postgres-$1.password"
  mkdir -p "$PG_SECRETS"
  chmod 0700 "$PG_SECRETS"
  if [[ ! -s $file ]]; then
    (umask 077 && "$OPENSSL" rand -hex 24 >"$file.tmp")
    mv "$file.tmp" "$file"
  fi
  chmod 0600 "$file"
  cat "$file"
}

# pg_logins_sql: the group roles (NOLOGIN, as migration 0003 creates them: whichever runs
# first) and their login users, as SQL for psql. The passwords go to psql on its input, never
# on a command line.
pg_logins_sql() {
  local name
  for name in "${PG_LOGINS[@]}"; do
    cat <<EOF
SELECT format('CREATE ROLE %I NOLOGIN', 'pipeline_$name')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pipeline_$name') \gexec
SELECT format('CREATE ROLE %I', '$name')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$name') \gexec
ALTER ROLE "$name" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
 PASSWORD '$(pg_password "$name")';
GRANT "pipeline_$name" TO "$name";
EOF
  done
}

postgres_start() {
  local base user
  base=$(pg_base)
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
  pg_configure "$base"
  step "PostgreSQL $PG_MAJOR: starting on 127.0.0.1:$PG_PORT" "$LOGS/postgres.log"
  port_open "$PG_PORT" && port_taken "$PG_PORT" "PG_PORT (a system PostgreSQL cluster?)"
  local launch=()
  if [[ $EUID -eq 0 ]]; then launch=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
  # The log file is opened here, by the caller, so it can sit in .stack/logs either way.
  (cd / && exec setsid "${launch[@]}" "$PG_BIN/postgres" -D "$base/data") \
    >>"$LOGS/postgres.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/postgres.pid"
  note "PostgreSQL: pid $!; log .stack/logs/postgres.log"
}

pg_psql() { # psql as the cluster's superuser over its socket
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(pg_base)/run" -p "$PG_PORT" -U postgres "$@"
}

postgres_wait() {
  step "PostgreSQL: waiting until it accepts connections" "$LOGS/postgres.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    server_pid postgres >/dev/null || die "the postgres process exited"
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    ((SECONDS < deadline)) || die "PostgreSQL did not accept connections within ${START_TIMEOUT}s"
    sleep 0.5
  done
  # A server that was running already reads the new certificate, stack.conf and pg_hba.conf
  # on a reload (ssl and its files are reloadable since PostgreSQL 10).
  step "PostgreSQL: TLS and pg_hba.conf" "$LOGS/postgres.log"
  pg_configure "$(pg_base)"
  # ssl off: an older cluster, or an 'up' that stopped before its reload.
  if [[ $PG_CHANGED -eq 1 || $(pg_psql -d postgres -At -c "SHOW ssl") != on ]]; then
    pg_psql -d postgres -At -c "SELECT pg_reload_conf()" >/dev/null
    note "PostgreSQL: configuration or certificate changed: reloaded"
  fi
  # A file the server refuses on reload leaves the old one in force: say so here. The check
  # runs after the reload, since hostssl lines are errors while ssl is still off.
  local bad="" i
  for ((i = 0; i < 10; i++)); do
    bad=$(pg_psql -d postgres -At -c "SELECT string_agg(line_number || ': ' || error, '; ')
      FROM pg_hba_file_rules WHERE error IS NOT NULL")
    [[ -z $bad ]] && break
    sleep 0.5
  done
  [[ -z $bad ]] || die "pg_hba.conf has lines the server refuses: $bad"
  [[ $(pg_psql -d postgres -At -c "SHOW ssl") == on ]] ||
    die "ssl is not on after the reload (a certificate or a stack.conf line refused?)"
  step "PostgreSQL: role '$DB_USER', database '$DB_NAME', extension timescaledb, login users ${PG_LOGINS[*]}" \
    "$LOGS/postgres-setup.log"
  # Made here rather than inside the SQL below, where a failure would go unnoticed.
  local name
  for name in "${PG_LOGINS[@]}"; do pg_password "$name" >/dev/null; done
  # SUPERUSER: a throwaway local cluster where the tests and migrations create schemas and
  # the timescaledb extension (CREATE EXTENSION needs superuser or the database owner
  # with a trusted extension; timescaledb is not trusted).
  # A failing statement is not written to the server's log: it may hold a password.
  pg_psql -d postgres >"$LOGS/postgres-setup.log" 2>&1 <<EOF
SET client_min_messages = warning;
SET log_min_error_statement = panic;
SELECT format('CREATE ROLE %I LOGIN SUPERUSER PASSWORD %L', '$DB_USER', '$DB_PASSWORD')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') \gexec
$(pg_logins_sql)
\connect $DB_NAME
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS timescaledb;
-- The migrator (tools.setup) creates the schemas and the tables, public's included: PostgreSQL
-- 15 gives no role but the database's owner CREATE on public.
GRANT CREATE ON DATABASE "$DB_NAME" TO pipeline_migrator;
GRANT USAGE, CREATE ON SCHEMA public TO pipeline_migrator;
EOF
  # Over TCP as a client will: TLS verified against the local CA (the certificate names
  # 127.0.0.1), a password. Retried a moment, as a reload reaches new backends asynchronously.
  local v=""
  for ((i = 0; i < 10; i++)); do
    v=$(PGPASSWORD=$DB_PASSWORD "$PG_BIN/psql" -X -At \
      "host=127.0.0.1 port=$PG_PORT user=$DB_USER dbname=$DB_NAME sslmode=verify-full sslrootcert=$CA_CRT" \
      -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'" \
      2>>"$LOGS/postgres-setup.log") && break
    sleep 0.5
  done
  [[ -n $v ]] || die "cannot log in as $DB_USER over TLS (sslmode=verify-full) with its password, or timescaledb is not in $DB_NAME"
  note "PostgreSQL: ready (postgresql://$DB_USER:***@127.0.0.1:$PG_PORT/$DB_NAME, TLS on, timescaledb $v)"
  if [[ $PG_PLAINTEXT == on ]]; then
    note "WARNING: PG_PLAINTEXT=on: '$DB_USER' may connect over plain TCP (password and data unencrypted); for development only"
  else
    note "PostgreSQL: plain TCP refused for every role (PG_PLAINTEXT=on allows it for '$DB_USER', for development)"
  fi
}

# ---------------------------------------------------------------- Keycloak

# The realm's clients' secrets, its users' passwords and the bootstrap admin's (master realm)
# password: generated once per STACK_DIR, never committed. The realm file names them as
# ${SENSOR_IDP_*} placeholders, which Keycloak fills from its environment when it imports the
# realm (its first start only: a realm that exists is not imported again).
KEYCLOAK_SECRET_FILES=(bootstrap-admin.password fleet-simulator.secret pipeline-provisioner.secret
  operator.password admin.password)

keycloak_secrets() {
  local file missing=()
  mkdir -p "$KEYCLOAK_SECRETS"
  chmod 0700 "$SECRETS" "$KEYCLOAK_SECRETS"
  for file in "${KEYCLOAK_SECRET_FILES[@]}"; do
    [[ -s "$KEYCLOAK_SECRETS/$file" ]] || missing+=("$file")
  done
  ((${#missing[@]})) || return 0
  if compgen -G "$KEYCLOAK_DIR/h2/keycloakdb*" >/dev/null; then
    die "Keycloak's database ($KEYCLOAK_DIR/h2) was made with secrets that are gone" \
      "(${missing[*]} in $KEYCLOAK_SECRETS): remove $KEYCLOAK_DIR to import the realm again"
  fi
  for file in "${missing[@]}"; do
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$KEYCLOAK_SECRETS/$file")
  done
  note "Keycloak: generated ${missing[*]} in $KEYCLOAK_SECRETS (0600)"
}

keycloak_secret() { cat "$KEYCLOAK_SECRETS/$1"; } # FILE: one of KEYCLOAK_SECRET_FILES

# Secrets of what the realm file got after realms were first imported (the viewer user):
# generated when missing, whatever the realm's state, since keycloak_realm_update gives an
# existing realm what they are for.
KEYCLOAK_LATER_SECRET_FILES=(viewer.password)

keycloak_later_secrets() {
  local file
  mkdir -p "$KEYCLOAK_SECRETS"
  for file in "${KEYCLOAK_LATER_SECRET_FILES[@]}"; do
    [[ -s "$KEYCLOAK_SECRETS/$file" ]] && continue
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$KEYCLOAK_SECRETS/$file")
    note "Keycloak: generated $file in $KEYCLOAK_SECRETS (0600)"
  done
}

keycloak_conf_port() { sed -n 's|^https\{0,1\}-port=\([0-9]*\)$|\1|p' "$KEYCLOAK_CONF" 2>/dev/null; }

# keycloak_scheme: http, or https when KEYCLOAK_TLS=on (then with the local CA's certificate
# for Keycloak, STACK_DIR/certs/keycloak.crt and .key, on the same ports).
keycloak_scheme() { if [[ $KEYCLOAK_TLS == on ]]; then echo https; else echo http; fi; }

keycloak_listener() { # the config lines of the listener: plain HTTP, or HTTPS (KEYCLOAK_TLS=on)
  if [[ $KEYCLOAK_TLS != on ]]; then
    printf '%s\n' "http-enabled=true" "http-port=$KEYCLOAK_PORT"
    return 0
  fi
  [[ -f $KEYCLOAK_CERT && -f $KEYCLOAK_KEY ]] ||
    die "KEYCLOAK_TLS=on needs the certificate $KEYCLOAK_CERT and its key $KEYCLOAK_KEY"
  # The management interface (health) serves TLS with the same certificate.
  printf '%s\n' "http-enabled=false" "https-port=$KEYCLOAK_PORT" \
    "https-certificate-file=$KEYCLOAK_CERT" "https-certificate-key-file=$KEYCLOAK_KEY"
}

keycloak_render_config() {
  local listener
  listener=$(keycloak_listener)
  cat >"$KEYCLOAK_CONF" <<EOC
# Rendered by deploy/local/stack.sh on every 'up'; edits here are overwritten.
# Build options (db=dev-file, health-enabled) are baked in by 'kc.sh build' (install.sh).
http-host=127.0.0.1
$listener
http-management-port=$KEYCLOAK_MANAGEMENT_PORT
# The issuer of every token: fixed, whatever Host header a client sends.
hostname=$(keycloak_scheme)://127.0.0.1:$KEYCLOAK_PORT
hostname-backchannel-dynamic=false
# One node: no cluster discovery.
cache=local
# The options Keycloak adds to its own dev-file URL: VALUE is a column name in its schema.
db-url=jdbc:h2:file:$KEYCLOAK_DIR/h2/keycloakdb;NON_KEYWORDS=VALUE
log-console-color=false
EOC
}

keycloak_start() {
  step "Keycloak: starting on $(keycloak_scheme)://127.0.0.1:$KEYCLOAK_PORT (management :$KEYCLOAK_MANAGEMENT_PORT)" \
    "$LOGS/keycloak.log"
  local p java_home
  for p in "$KEYCLOAK_PORT" "$KEYCLOAK_MANAGEMENT_PORT"; do
    port_open "$p" && port_taken "$p" "KEYCLOAK_PORT / KEYCLOAK_MANAGEMENT_PORT"
  done
  java_home=$(keycloak_java_home) || die "Keycloak needs Java 21 or newer (set KEYCLOAK_JAVA_HOME)"
  mkdir -p "$KEYCLOAK_DIR" "$KEYCLOAK_HOME/data/import"
  keycloak_secrets
  keycloak_later_secrets
  # --import-realm reads <home>/data/import; the file there is the repo's, copied each start.
  cp "$KEYCLOAK_REALM_FILE" "$KEYCLOAK_HOME/data/import/$KEYCLOAK_REALM.json"
  keycloak_render_config
  # The secrets go in the environment (readable only by this user), not on the command line.
  (cd "$KEYCLOAK_DIR" && exec env JAVA_HOME="$java_home" \
    KC_BOOTSTRAP_ADMIN_USERNAME=bootstrap-admin \
    KC_BOOTSTRAP_ADMIN_PASSWORD="$(keycloak_secret bootstrap-admin.password)" \
    SENSOR_IDP_FLEET_SIMULATOR_SECRET="$(keycloak_secret fleet-simulator.secret)" \
    SENSOR_IDP_PROVISIONER_SECRET="$(keycloak_secret pipeline-provisioner.secret)" \
    SENSOR_IDP_OPERATOR_PASSWORD="$(keycloak_secret operator.password)" \
    SENSOR_IDP_ADMIN_PASSWORD="$(keycloak_secret admin.password)" \
    SENSOR_IDP_VIEWER_PASSWORD="$(keycloak_secret viewer.password)" \
    setsid "$KEYCLOAK_HOME/bin/kc.sh" --config-file="$KEYCLOAK_CONF" start --optimized --import-realm) \
    >>"$LOGS/keycloak.log" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN/keycloak.pid"
  note "Keycloak: pid $!; log .stack/logs/keycloak.log"
}

# Ready when the management port's /health/ready says UP and the realm serves its OpenID
# configuration (the import is done).
keycloak_wait() {
  step "Keycloak: waiting for /health/ready and realm $KEYCLOAK_REALM" "$LOGS/keycloak.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  local scheme realm_url pid curl_tls=()
  scheme=$(keycloak_scheme)
  realm_url="$scheme://127.0.0.1:$KEYCLOAK_PORT/realms/$KEYCLOAK_REALM"
  if [[ $scheme == https ]]; then curl_tls=(--cacert "$STACK_CA"); fi
  pid=$(cat "$RUN/keycloak.pid")
  while ((SECONDS < deadline)); do
    # By pid alone: for its first moments the process is still this script's subshell,
    # before it becomes kc.sh (whose command line server_pid looks for).
    kill -0 "$pid" 2>/dev/null || die "the Keycloak process exited"
    if curl -fsS -o /dev/null --max-time 5 "${curl_tls[@]}" \
      "$scheme://127.0.0.1:$KEYCLOAK_MANAGEMENT_PORT/health/ready" 2>/dev/null &&
      curl -fsS -o /dev/null --max-time 5 "${curl_tls[@]}" \
        "$realm_url/.well-known/openid-configuration" 2>/dev/null; then
      note "Keycloak: ready ($realm_url; secrets in $KEYCLOAK_SECRETS)"
      keycloak_realm_update
      return 0
    fi
    sleep 1
  done
  die "Keycloak did not become ready on 127.0.0.1:$KEYCLOAK_PORT within ${START_TIMEOUT}s"
}

# ---------------------------------------------------------------- Keycloak: realm updates
# Keycloak imports the realm file only into a realm that does not exist: a realm made by an
# older realm.json would never get what was added to it since. keycloak_realm_update gives it
# the clients, client protocol mappers, users and users' realm roles of the file that it lacks,
# through the admin REST API as the bootstrap admin (master realm). It only adds, matching by
# clientId, mapper name and username, so running it again changes nothing; what exists is
# never changed or removed (an edited mapper or a removed user is a new realm's, or by hand).

# keycloak_realm_rendered: the realm file with its ${SENSOR_IDP_*} placeholders filled in.
keycloak_realm_rendered() {
  keycloak_later_secrets >/dev/null
  env SENSOR_IDP_FLEET_SIMULATOR_SECRET="$(keycloak_secret fleet-simulator.secret)" \
    SENSOR_IDP_PROVISIONER_SECRET="$(keycloak_secret pipeline-provisioner.secret)" \
    SENSOR_IDP_OPERATOR_PASSWORD="$(keycloak_secret operator.password)" \
    SENSOR_IDP_ADMIN_PASSWORD="$(keycloak_secret admin.password)" \
    SENSOR_IDP_VIEWER_PASSWORD="$(keycloak_secret viewer.password)" \
    jq 'walk(if type == "string"
      then gsub("\\$\\{(?<v>SENSOR_IDP_[A-Z_]+)\\}"; $ENV[.v] // "") else . end)' \
    "$KEYCLOAK_REALM_FILE"
}

# kc_admin METHOD PATH [BODY]: one admin REST call on the realm (PATH under
# /admin/realms/<realm>), the body on stdin when BODY is "-"; prints the answer, fails on an
# HTTP error. The token is read from a 0600 header file, never put on a command line.
kc_admin() {
  local data=()
  [[ ${3:-} == - ]] && data=(-H 'Content-Type: application/json' --data-binary @-)
  curl -fsS --max-time 10 "${KC_CURL_TLS[@]}" -X "$1" -H @"$KC_HEADER" "${data[@]}" \
    "$KC_BASE/admin/realms/$KEYCLOAK_REALM$2"
}

keycloak_realm_update() {
  step "Keycloak: bringing realm $KEYCLOAK_REALM up to date with $KEYCLOAK_REALM_FILE" \
    "$LOGS/keycloak-realm.log"
  command -v jq >/dev/null || die "jq is needed to update the realm (apt-get install jq)"
  KC_BASE="$(keycloak_scheme)://127.0.0.1:$KEYCLOAK_PORT"
  KC_CURL_TLS=()
  [[ $KEYCLOAK_TLS == on ]] && KC_CURL_TLS=(--cacert "$STACK_CA")
  KC_HEADER="$RUN/keycloak-admin.header"
  mkdir -p "$RUN"
  local token realm
  token=$(curl -fsS --max-time 10 "${KC_CURL_TLS[@]}" -d grant_type=password -d client_id=admin-cli \
    -d username=bootstrap-admin --data-urlencode "password@$KEYCLOAK_SECRETS/bootstrap-admin.password" \
    "$KC_BASE/realms/master/protocol/openid-connect/token" 2>>"$LOGS/keycloak-realm.log" |
    jq -r .access_token) || die "the bootstrap admin (secrets/keycloak/bootstrap-admin.password) got no token"
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" >"$KC_HEADER")
  realm=$(keycloak_realm_rendered)
  local added=0
  keycloak_add_clients "$realm"
  keycloak_add_users "$realm"
  rm -f "$KC_HEADER"
  if ((added)); then note "Keycloak: realm $KEYCLOAK_REALM: $added added"; else
    note "Keycloak: realm $KEYCLOAK_REALM current"
  fi
}

keycloak_add_clients() { # REALM_JSON: the clients it lacks, and its clients' missing mappers
  local realm=$1 client_id client id have mapper name
  while read -r client_id; do
    client=$(jq -c --arg c "$client_id" '.clients[] | select(.clientId == $c)' <<<"$realm")
    id=$(kc_admin GET "/clients?clientId=$client_id" | jq -r --arg c "$client_id" \
      '[.[] | select(.clientId == $c)][0].id // empty')
    if [[ -z $id ]]; then
      kc_admin POST /clients - <<<"$client" >/dev/null
      note "Keycloak: added client $client_id"
      added=$((added + 1))
      continue
    fi
    have=$(kc_admin GET "/clients/$id/protocol-mappers/models" | jq -c '[.[].name]')
    while read -r name; do
      [[ -n $name ]] || continue
      jq -e --arg n "$name" 'index($n) != null' <<<"$have" >/dev/null && continue
      mapper=$(jq -c --arg n "$name" '.protocolMappers[] | select(.name == $n)' <<<"$client")
      kc_admin POST "/clients/$id/protocol-mappers/models" - <<<"$mapper" >/dev/null
      note "Keycloak: added mapper '$name' to client $client_id"
      added=$((added + 1))
    done < <(jq -r '.protocolMappers // [] | .[].name' <<<"$client")
  done < <(jq -r '.clients[].clientId' <<<"$realm")
}

keycloak_add_users() { # REALM_JSON: the users it lacks (with their passwords), missing realm roles
  local realm=$1 username user id role have
  while read -r username; do
    user=$(jq -c --arg u "$username" '.users[] | select(.username == $u)' <<<"$realm")
    id=$(kc_admin GET "/users?exact=true&username=$username" | jq -r '.[0].id // empty')
    if [[ -z $id ]]; then
      jq -c 'del(.realmRoles, .clientRoles)' <<<"$user" | kc_admin POST /users - >/dev/null
      id=$(kc_admin GET "/users?exact=true&username=$username" | jq -r '.[0].id // empty')
      [[ -n $id ]] || die "user $username is not in the realm after creating it"
      note "Keycloak: added user $username"
      added=$((added + 1))
    fi
    have=$(kc_admin GET "/users/$id/role-mappings/realm" | jq -c '[.[].name]')
    while read -r role; do
      [[ -n $role ]] || continue
      jq -e --arg r "$role" 'index($r) != null' <<<"$have" >/dev/null && continue
      kc_admin GET "/roles/$role" | jq -c '[{id, name}]' |
        kc_admin POST "/users/$id/role-mappings/realm" - >/dev/null
      note "Keycloak: gave user $username the realm role $role"
      added=$((added + 1))
    done < <(jq -r '.realmRoles // [] | .[]' <<<"$user")
  done < <(jq -r '.users[] | select(.serviceAccountClientId == null) | .username' <<<"$realm")
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

# chosen NAME...: sets CHOSEN to the servers named (all when none), in the table's order.
CHOSEN=()
chosen() {
  local name wanted
  CHOSEN=()
  for wanted in "$@"; do
    [[ -n ${LABEL[$wanted]:-} ]] || die "no server '$wanted' (one of: ${SERVERS[*]})"
  done
  for name in "${SERVERS[@]}"; do
    if [[ $# -eq 0 || " $* " == *" $name "* ]]; then CHOSEN+=("$name"); fi
  done
}

cmd_up() {
  local t0=$SECONDS name
  chosen "$@"
  mkdir -p "$CACHE" "$STACK" "$LOGS" "$RUN"
  chmod 0755 "$CACHE" "$STACK"
  lock
  say "Local stack in $STACK"
  install_all "${CHOSEN[@]}"
  step "certificates: checking $CERTS"
  certs_ensure
  certs_restart_note
  # Start them all, then wait, Kafka last: the JVMs start while the others come up.
  step "starting the servers"
  for name in "${CHOSEN[@]}"; do server_start "$name"; done
  for name in "${CHOSEN[@]}"; do [[ $name == kafka ]] || "${name}_wait"; done
  if [[ " ${CHOSEN[*]} " == *" kafka "* ]]; then kafka_wait; fi
  say "Stack is up in $((SECONDS - t0))s"
  cmd_status
}

cmd_down() {
  chosen "$@"
  if [[ ! -d $RUN ]]; then
    say "Nothing of the stack was running"
    return 0
  fi
  lock
  local name any=0
  for name in "${CHOSEN[@]}"; do
    if server_stop "$name"; then any=1; fi
  done
  if [[ $any -eq 0 ]]; then say "Nothing of the stack was running"; else say "Stack stopped"; fi
}

# rotate-certs [--ca]: new server keys and certificates signed by the same CA (--ca: a new CA
# as well), then the list of servers that must be restarted to load them.
cmd_rotate_certs() {
  mkdir -p "$STACK"
  lock
  certs_rotate "$@"
  certs_restart_note
}

cmd_status() {
  local name pid
  for name in "${SERVERS[@]}"; do
    if pid=$(server_pid "$name"); then
      printf '%-10s running  pid %-8s 127.0.0.1:%s\n' "$name" "$pid" "$("${name}_conf_port")"
    else
      printf '%-10s stopped\n' "$name"
    fi
  done
}

# Sourced (the unit tests render the Mosquitto config so), it only defines.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case "${1:-}" in
    up) cmd_up "${@:2}" ;;
    down) cmd_down "${@:2}" ;;
    status) cmd_status ;;
    rotate-certs)
      shift
      [[ $# -eq 0 || ($# -eq 1 && $1 == --ca) ]] || {
        echo "usage: bash deploy/local/stack.sh rotate-certs [--ca]" >&2
        exit 2
      }
      cmd_rotate_certs "$@"
      ;;
    *)
      echo "usage: bash deploy/local/stack.sh up|down [NAME...] | status | rotate-certs [--ca]" >&2
      exit 2
      ;;
  esac
fi
