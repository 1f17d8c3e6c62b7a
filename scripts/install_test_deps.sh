#!/usr/bin/env bash
# Makes the deploy checks' virtualenv (below), then
# installs the message brokers the e2e tests start as processes of their own (tests/brokers.py):
# the Debian packages redis-server, rabbitmq-server and nats-server, only those whose binaries
# are missing; and prometheus (with promtool) for the alert rules' tests, and chromium with
# chromium-driver for the dashboard's browser tests. With all present it is a no-op that never
# calls apt.
#
# The packages' system services are not started: a policy-rc.d that exits 101 (action forbidden)
# is in place during the install (invoke-rc.d and deb-systemd-invoke both honour it), and any
# policy-rc.d that was there before is put back afterwards.
set -euo pipefail

search="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
have() { PATH="$search" command -v "$1" >/dev/null 2>&1; }

# The deploy checks' virtualenv, $VENV/deploy-checks (tests/unit/test_k8s_manifests.py and
# test_image_context.py run it as a subprocess): checkov, which pins packaging<24 below what
# the dev extra needs, and kserve, whose API models validate the KServe manifests (it also
# registers protobuf names that clash with tritonclient's, so it never runs inside pytest).
# Made again only when the pins change.
deploy_checks_pins="checkov==3.3.30 kserve==0.21.0"
project_venv="${VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}"
deploy_checks="$project_venv/deploy-checks"
if [ "$(cat "$deploy_checks/.pins" 2>/dev/null)" != "$deploy_checks_pins" ]; then
    echo "install_test_deps: making $deploy_checks ($deploy_checks_pins)" >&2
    base_python="$project_venv/bin/python"
    [ -x "$base_python" ] || base_python=python3
    "$base_python" -m venv --clear "$deploy_checks"
    # shellcheck disable=SC2086  # the pins are separate words
    "$deploy_checks/bin/python" -m pip install --quiet $deploy_checks_pins
    printf '%s' "$deploy_checks_pins" >"$deploy_checks/.pins"
fi

missing=()
for package in redis-server rabbitmq-server nats-server prometheus; do
    # each package's binary has the package's name
    have "$package" || missing+=("$package")
done
# Debian's prometheus package also ships promtool (the alert rules' tests run it)
if ! have promtool && [[ " ${missing[*]-} " != *" prometheus "* ]]; then
    missing+=(prometheus)
fi
# the dashboard's browser tests (tests/e2e/test_dashboard.py): Chromium and its WebDriver
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
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
    binary="$package"
    [ "$package" = chromium-driver ] && binary=chromedriver
    if ! have "$binary"; then
        echo "install_test_deps: $package installed but its binary is not found" >&2
        exit 1
    fi
done
