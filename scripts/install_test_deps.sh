#!/usr/bin/env bash
# Installs the message brokers the e2e tests start as processes of their own (tests/brokers.py):
# the Debian packages redis-server, rabbitmq-server and nats-server, only those whose binaries
# are missing. With all three present it is a no-op that never calls apt.
#
# The packages' system services are not started: a policy-rc.d that exits 101 (action forbidden)
# is in place during the install (invoke-rc.d and deb-systemd-invoke both honour it), and any
# policy-rc.d that was there before is put back afterwards.
set -euo pipefail

search="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
have() { PATH="$search" command -v "$1" >/dev/null 2>&1; }

missing=()
for package in redis-server rabbitmq-server nats-server; do
    # each package's binary has the package's name
    have "$package" || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "install_test_deps: installing ${missing[*]}" >&2
if ! have apt-get; then
    echo "install_test_deps: no apt-get here; install ${missing[*]} yourself" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! have sudo; then
        echo "install_test_deps: installing ${missing[*]} needs root (or sudo)" >&2
        exit 1
    fi
    sudo=(sudo)
fi

policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then
    backup="$(mktemp)"
    "${sudo[@]}" cp -p "$policy" "$backup"
fi
restore() {
    if [ -n "$backup" ]; then
        "${sudo[@]}" cp -p "$backup" "$policy"
        "${sudo[@]}" rm -f "$backup"
    else
        "${sudo[@]}" rm -f "$policy"
    fi
}
trap restore EXIT
trap 'exit 130' INT TERM
printf '#!/bin/sh\n# install_test_deps.sh: start no service during the install\nexit 101\n' |
    "${sudo[@]}" tee "$policy" >/dev/null
"${sudo[@]}" chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"

for package in "${missing[@]}"; do
    if ! have "$package"; then
        echo "install_test_deps: $package installed but its binary is not found" >&2
        exit 1
    fi
done
