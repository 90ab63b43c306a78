#!/usr/bin/env bash
# Installs what the local stack runs, each piece once and cached (stack.sh up runs this first):
#   the Kafka 4 jars (Maven Central, into .stack/kafka/libs), Mosquitto 2 and PostgreSQL from
#   Debian, TimescaleDB (Debian's package, or built from Debian trixie's source package),
#   Keycloak (Maven Central's keycloak-quarkus-dist, unpacked and built into .stack/keycloak-<v>).
#
#   bash deploy/local/install.sh        (or source it and call install_all)
#
# Downloads and builds stay in <repo>/.stack/ (git ignores it); logs go to STACK_DIR/logs.
# Settings: PG_MAJOR=15, DEBIAN_MIRROR (see deploy/local/README.md).
set -Eeuo pipefail

# shellcheck source=deploy/local/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

export DEBIAN_FRONTEND=noninteractive

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

# ---------------------------------------------------------------- Mosquitto
mosquitto_install() {
  if [[ -x "$(mosquitto_bin)" ]] && command -v mosquitto_sub >/dev/null; then
    note "Mosquitto: $("$(mosquitto_bin)" -h 2>/dev/null | head -n 1 || true)"
    return 0
  fi
  apt_install mosquitto mosquitto-clients
}

# ---------------------------------------------------------------- PostgreSQL + TimescaleDB
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

# ---------------------------------------------------------------- Keycloak
# The distribution is Maven Central's org.keycloak:keycloak-quarkus-dist tar.gz, unpacked into
# KEYCLOAK_HOME; `kc.sh build` then bakes the build options in (about 20 s), so that each start
# is `kc.sh start --optimized`. .built holds the options it was built with.
keycloak_install() {
  if [[ -f "$KEYCLOAK_HOME/.built" && $(cat "$KEYCLOAK_HOME/.built") == "$KEYCLOAK_BUILD_OPTIONS" ]]; then
    note "Keycloak $KEYCLOAK_VERSION: cached in .stack/keycloak-$KEYCLOAK_VERSION"
    return 0
  fi
  local java_home
  java_home=$(keycloak_java_home) ||
    die "Keycloak $KEYCLOAK_VERSION needs Java 21 or newer: none in JAVA_HOME, PATH or /usr/lib/jvm (set KEYCLOAK_JAVA_HOME)"
  if ! command -v mvn >/dev/null; then apt_install maven; fi
  local log="$LOGS/keycloak-install.log"
  local archive="$CACHE/m2/org/keycloak/keycloak-quarkus-dist/$KEYCLOAK_VERSION/keycloak-quarkus-dist-$KEYCLOAK_VERSION.tar.gz"
  if [[ ! -f $archive ]]; then
    step "Keycloak $KEYCLOAK_VERSION: fetching keycloak-quarkus-dist from Maven Central (~160 MB)" "$log"
    # Into the Maven repository of .stack/m2, where the archive stays (no second copy).
    mvn -B -q -Dmaven.repo.local="$CACHE/m2" dependency:get -Dtransitive=false \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:tar.gz" >"$log" 2>&1
    [[ -f $archive ]] || die "Maven did not leave $archive"
  fi
  step "Keycloak $KEYCLOAK_VERSION: unpacking into .stack/keycloak-$KEYCLOAK_VERSION" "$log"
  rm -rf "$KEYCLOAK_HOME" "$KEYCLOAK_HOME.tmp"
  mkdir -p "$KEYCLOAK_HOME.tmp"
  tar -xzf "$archive" -C "$KEYCLOAK_HOME.tmp" --strip-components=1 >>"$log" 2>&1
  mv "$KEYCLOAK_HOME.tmp" "$KEYCLOAK_HOME"
  step "Keycloak $KEYCLOAK_VERSION: kc.sh build $KEYCLOAK_BUILD_OPTIONS (once; Java $(java_major "$java_home/bin/java"))" "$log"
  # shellcheck disable=SC2086  # the build options are a word list
  JAVA_HOME=$java_home "$KEYCLOAK_HOME/bin/kc.sh" build $KEYCLOAK_BUILD_OPTIONS >>"$log" 2>&1
  echo "$KEYCLOAK_BUILD_OPTIONS" >"$KEYCLOAK_HOME/.built"
}

# ---------------------------------------------------------------- all of it
# install_all [NAME...]: what is missing (of those servers; all by default), under a lock on the shared cache, so that two stacks (other
# STACK_DIRs) starting at once do not both resolve the jars or build TimescaleDB. The lock
# (fd 8) is let go before returning: the servers started afterwards must not hold it.
install_all() {
  mkdir -p "$CACHE" "$LOGS"
  exec 8>"$CACHE/install.lock"
  if ! flock -n 8; then
    say "waiting for another install to finish (lock .stack/install.lock)"
    flock -w 900 8 || die "another install still holds .stack/install.lock after 900s"
  fi
  step "checking what is installed" "$LOGS/apt.log"
  local name names=("$@")
  ((${#names[@]})) || names=(kafka mosquitto postgres keycloak)
  for name in "${names[@]}"; do
    "${name}_install"
  done
  exec 8>&-
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  trap 'on_error $? "$BASH_COMMAND"' ERR
  install_all
fi
