#!/bin/sh
# Install and start the system packages ndt's controller, emulation and tests need (Debian, as root).
# Idempotent: apt-get runs only for packages that are missing; OVS is started only if it is not running.
set -eu

PACKAGES="openvswitch-switch mininet iproute2 ethtool iputils-ping iperf3 prometheus procps psmisc strace dnsmasq-base udhcpc"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps.sh: must run as root (apt-get, ovs-ctl)" >&2
    exit 1
fi

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show $missing >/dev/null 2>&1; then
        apt-get update
    fi
    apt-get install -y --no-install-recommends $missing
fi

if ! /usr/share/openvswitch/scripts/ovs-ctl status >/dev/null 2>&1; then
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random
fi
ovs-vsctl --timeout=10 show >/dev/null
echo "install-system-deps.sh: openvswitch $(ovs-vsctl --version | head -1 | awk '{print $NF}') running; newly installed:${missing:- nothing}"
