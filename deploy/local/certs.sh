#!/usr/bin/env bash
# The local stack's TLS certificates: one CA and one server certificate per server, in
# STACK_DIR/certs (default .stack/certs). Sourced by stack.sh (`up` runs certs_ensure before
# the servers start; `rotate-certs` runs certs_rotate), or run alone:
#
#   bash deploy/local/certs.sh [ensure]     create what is missing, renew what is due (as `up`)
#   bash deploy/local/certs.sh rotate [--ca] new server keys and certificates (--ca: a new CA too)
#
# Each stack (STACK_DIR) has its own CA, so a second stack or a test never touches the CA the
# main stack's clients trust, and renewing one CA does not invalidate another stack's
# certificates. Private keys are 0600 and the folder 0700. See deploy/local/README.md.
set -Eeuo pipefail

# shellcheck source=deploy/local/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CERTS="$STACK/certs"
CA_CRT="$CERTS/ca.crt"
CA_KEY="$CERTS/ca.key"
OPENSSL=${OPENSSL:-/usr/bin/openssl}
CA_DAYS=3650
CERT_DAYS=365
# A certificate valid for fewer days than this is renewed by the next `up`.
RENEW_DAYS=30

# One row per server that gets a certificate: its name (the file names NAME.crt, NAME.key)
# and the DNS names beside localhost, the docker-compose service name among them, so that
# docker-compose can use the same scheme. Every certificate also has IP:127.0.0.1.
CERT_SERVERS=()
declare -A CERT_DNS
while read -r name dns; do
  CERT_SERVERS+=("$name")
  CERT_DNS[$name]=$dns
done <<'EOF'
kafka      kafka
mosquitto  mosquitto
postgres   timescaledb postgres
ingest     ingest
keycloak   keycloak
admin      admin
EOF
unset name dns

# What the last certs_ensure or certs_rotate renewed (server names), for the caller to restart.
CERTS_RENEWED=()

cert_sans() { # NAME: its subjectAltName value
  local san="IP:127.0.0.1,DNS:localhost" d
  for d in ${CERT_DNS[$1]}; do san+=",DNS:$d"; done
  echo "$san"
}

# ---------------------------------------------------------------- checks
due() { # CERT: fails if the certificate is readable and valid for more than RENEW_DAYS days
  ! "$OPENSSL" x509 -in "$1" -noout -checkend $((RENEW_DAYS * 86400)) >/dev/null 2>&1
}

key_matches() { # CERT KEY: the key is the certificate's
  local a b
  a=$("$OPENSSL" x509 -in "$1" -noout -pubkey 2>/dev/null) || return 1
  b=$("$OPENSSL" pkey -in "$2" -pubout 2>/dev/null) || return 1
  [[ -n $a && $a == "$b" ]]
}

ca_ok() {
  [[ -f $CA_CRT && -f $CA_KEY ]] && ! due "$CA_CRT" && key_matches "$CA_CRT" "$CA_KEY"
}

# server_cert_ok NAME: its certificate and key exist, match, verify against the CA, carry the
# SANs of the table above and are valid for more than RENEW_DAYS days. One x509 call reads
# the expiry check, the public key and the SANs (each openssl start costs ~30 ms).
server_cert_ok() {
  local crt="$CERTS/$1.crt" key="$CERTS/$1.key" out want have
  [[ -f $crt && -f $key ]] || return 1
  out=$("$OPENSSL" x509 -in "$crt" -noout -checkend $((RENEW_DAYS * 86400)) -pubkey \
    -ext subjectAltName 2>/dev/null) || return 1
  [[ $(sed -n '/-BEGIN PUBLIC KEY-/,/-END PUBLIC KEY-/p' <<<"$out") == \
    "$("$OPENSSL" pkey -in "$key" -pubout 2>/dev/null)" ]] || return 1
  "$OPENSSL" verify -CAfile "$CA_CRT" -purpose sslserver "$crt" >/dev/null 2>&1 || return 1
  want=$(cert_sans "$1" | tr ',' '\n' | sed 's/^IP:/IP Address:/' | sort)
  have=$(sed -n '/Subject Alternative Name/{n;p;}' <<<"$out" | tr ',' '\n' | sed 's/^ *//' | sort)
  [[ -n $have && $want == "$have" ]]
}

# ---------------------------------------------------------------- making them
# Keys and certificates are written to a temporary name in CERTS and moved into place, so an
# interrupted run leaves either the old pair or none, never half a file.
new_ca() {
  step "certificates: a new local CA (EC P-256, $CA_DAYS days) in $CERTS" "$LOGS/certs.log"
  (
    umask 077
    "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$CA_KEY.tmp"
    "$OPENSSL" req -x509 -new -key "$CA_KEY.tmp" -sha256 -days "$CA_DAYS" \
      -subj "/O=sensor-pipeline local stack/CN=sensor-pipeline local CA $(date -u +%Y%m%dT%H%M%SZ)" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" \
      -out "$CA_CRT.tmp"
  ) >>"$LOGS/certs.log" 2>&1
  chmod 0644 "$CA_CRT.tmp"
  mv "$CA_KEY.tmp" "$CA_KEY"
  mv "$CA_CRT.tmp" "$CA_CRT"
}

new_server_cert() { # NAME
  local name=$1 crt="$CERTS/$1.crt" key="$CERTS/$1.key"
  step "certificates: $name ($(cert_sans "$name"), $CERT_DAYS days)" "$LOGS/certs.log"
  (
    umask 077
    "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key.tmp"
    "$OPENSSL" req -new -key "$key.tmp" -subj "/O=sensor-pipeline local stack/CN=$name" \
      -out "$CERTS/$name.csr"
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" \
      "subjectAltName=$(cert_sans "$name")" >"$CERTS/$name.ext"
    "$OPENSSL" x509 -req -in "$CERTS/$name.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" \
      -set_serial "0x$("$OPENSSL" rand -hex 16)" -sha256 -days "$CERT_DAYS" \
      -extfile "$CERTS/$name.ext" -out "$crt.tmp"
  ) >>"$LOGS/certs.log" 2>&1
  rm -f "$CERTS/$name.csr" "$CERTS/$name.ext"
  chmod 0644 "$crt.tmp"
  mv "$key.tmp" "$key"
  mv "$crt.tmp" "$crt"
  CERTS_RENEWED+=("$name")
}

certs_dir() {
  mkdir -p "$CERTS" "$LOGS"
  chmod 0700 "$CERTS"
  # Keys left by an older run or copied in with other modes are tightened, never loosened.
  local key
  for key in "$CERTS"/*.key; do
    [[ -f $key ]] && chmod 0600 "$key"
  done
  return 0
}

# ---------------------------------------------------------------- commands
# certs_ensure: creates the CA and each server's certificate if missing, and renews any that
# is due, does not match its key, or does not verify against the CA. Changes nothing else:
# a second run leaves every file as it was.
certs_ensure() {
  CERTS_RENEWED=()
  certs_dir
  ca_ok || new_ca
  local name
  for name in "${CERT_SERVERS[@]}"; do
    server_cert_ok "$name" || new_server_cert "$name"
  done
  if [[ ${#CERTS_RENEWED[@]} -eq 0 ]]; then
    note "certificates: current in $CERTS (CA $CA_CRT)"
  fi
}

# certs_rotate [--ca]: new keys and certificates for every server, signed by the same CA, or
# by a new one with --ca.
certs_rotate() {
  CERTS_RENEWED=()
  certs_dir
  if [[ ${1:-} == --ca ]] || ! ca_ok; then new_ca; fi
  local name
  for name in "${CERT_SERVERS[@]}"; do new_server_cert "$name"; done
}

# certs_restart_note: which servers must be restarted to load the certificates just renewed.
# Mosquitto (its TLS listener) loads its certificate when it starts: restart it to serve a new one.
certs_restart_note() {
  [[ ${#CERTS_RENEWED[@]} -eq 0 ]] && return 0
  say "certificates renewed for: ${CERTS_RENEWED[*]}"
  note "restart these servers to load them: ${CERTS_RENEWED[*]}"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  trap 'on_error $? "$BASH_COMMAND"' ERR
  mkdir -p "$STACK"
  case "${1:-ensure}" in
    ensure) certs_ensure ;;
    rotate)
      [[ ${2:-} == "" || ${2:-} == --ca ]] || {
        echo "usage: bash deploy/local/certs.sh rotate [--ca]" >&2
        exit 2
      }
      certs_rotate "${2:-}"
      ;;
    *)
      echo "usage: bash deploy/local/certs.sh [ensure | rotate [--ca]]" >&2
      exit 2
      ;;
  esac
  certs_restart_note
fi
