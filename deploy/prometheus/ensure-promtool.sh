#!/usr/bin/env bash
# promtool checks and unit-tests the alert rules (tests/unit/test_alerts.py), and the dashboard
# tests run a private Prometheus server of their own. Both come with Debian's prometheus package;
# install it only when either is missing, and never leave the server the package starts running:
# the tests start their own.
set -euo pipefail

have_both() {
    command -v promtool > /dev/null 2>&1 && command -v prometheus > /dev/null 2>&1
}

if have_both; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

install() {
    # policy-rc.d answering 101 keeps the package's post-install from starting the server.
    local policy=/usr/sbin/policy-rc.d created=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" > /dev/null
        $SUDO chmod +x "$policy"
        created=1
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends prometheus \
        || status=$?
    if [[ $created -eq 1 ]]; then
        $SUDO rm -f "$policy"
    fi
    return "$status"
}

# A fresh machine's package lists may be missing or stale: update once and try again.
if ! install; then
    $SUDO apt-get update
    install
fi

# Where systemd runs, the package also enabled the server for the next boot: only the command
# is wanted here.
if [[ -d /run/systemd/system ]]; then
    $SUDO systemctl disable --now prometheus > /dev/null 2>&1 || true
fi

have_both || {
    echo "ensure-promtool: the prometheus package installed no promtool or no prometheus" >&2
    exit 1
}
