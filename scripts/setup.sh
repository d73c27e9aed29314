#!/usr/bin/env bash
# Set up cloudweave on a Debian 12 machine, as root: Debian packages, Open vSwitch started, the virtualenv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(openvswitch-switch mininet iperf3 hping3 nmap iputils-ping ethtool iproute2 procps python3-venv python3-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The host's own OVS (for `cloudweave run` against real bridges). The test bed and the tests start private
# OVS instances of their own and do not need it. No kernel module here: the userspace datapath is used.
if ! /usr/share/openvswitch/scripts/ovs-ctl status >/dev/null 2>&1; then
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-monitor >/dev/null 2>&1 \
        || echo "setup: note: the host's OVS did not start (not needed by the demo or the tests)"
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv .venv
fi
if ! .venv/bin/python -c "import cloudweave, os_ken, ovsdbapp, mininet, pytest, scipy, topohub, matplotlib" 2>/dev/null \
        || [ setup.cfg -nt .venv/.installed ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test,bench,plot]'
    touch .venv/.installed
fi
echo "setup: ready ($(.venv/bin/python --version), $(ovs-vswitchd --version | head -1))"
