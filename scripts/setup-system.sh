#!/usr/bin/env bash
# Installs the Debian packages the tests and `x0tta6bl4 up --store etcd` use: etcd-server
# (a real etcd for the store tests), iproute2 (network namespaces), chromium (the UI test),
# what `x0tta6bl4 bench tun` drives: iperf3, wireguard-tools (`wg`, to configure the
# wireguard-go it measures against) and iputils-ping (round trips over the overlay), and what
# scripts/cluster's real Kubernetes cluster runs on: containerd and runc (the container
# runtime of every node), the CNI plugins, iptables/ipset/conntrack (kube-proxy, kube-router),
# debootstrap and umoci (scripts/build-image), curl.
# Idempotent; does nothing when everything is present.
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ipset >/dev/null 2>&1 || need+=(ipset)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "setup-system: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
fi
echo "setup-system: installing ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts etcd as a service on install; the tests start their own etcd processes.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi
pkill -x etcd >/dev/null 2>&1 || true
# Likewise containerd: every cluster node starts its own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now containerd >/dev/null 2>&1 || true; fi
