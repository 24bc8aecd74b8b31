"""Configuration files and Kubernetes objects that scripts/cluster writes (as JSON)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "VOLUMES_PER_NODE",
    "cni_config",
    "containerd_config",
    "coredns",
    "kube_proxy_config",
    "kube_router_rbac",
    "kubelet_config",
    "storage",
]

# Local PersistentVolumes per node in the StorageClasses' pool (the guide's etcd needs 3).
VOLUMES_PER_NODE = 4


def containerd_config(pause_image: str) -> str:
    """containerd 1.6 (config version 2): CRI with runc on cgroupfs, overlayfs, CNI from Debian.

    Paths are containerd's defaults; each node's mount namespace makes them its own.
    """
    return f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  enable_selinux = false
  # This machine grants no CAP_SYS_RESOURCE, so no process may lower its oom_score_adj:
  # keep containers' at or above containerd's own instead of failing to create them.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"""


def kubelet_config(
    *, ca: str, cert: str, key: str, node_ip: str, dns_ip: str, cgroup_root: str, resolv: str
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": ca},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": cert,
        "tlsPrivateKeyFile": key,
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        # This machine has cgroup v1 hierarchies (cgroup2 only at /sys/fs/cgroup/unified);
        # kubelet 1.35 refuses v1 unless told not to.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        "clusterDNS": [dns_ip],
        "clusterDomain": "cluster.local",
        "resolvConf": resolv,
        # Every node shares one disk: pressure thresholds that a busy shared machine does not
        # trip (the real limits are the machine's).
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "protectKernelDefaults": False,
        "kernelMemcgNotification": False,
        "maxPods": 110,
        "podPidsLimit": -1,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s",
        "logging": {"format": "text"},
    }


def cni_config(pod_cidr: str) -> dict[str, Any]:
    """The node's pods on bridge cni0 (Debian's CNI plugins), addresses from its pod CIDR."""
    return {
        "cniVersion": "1.0.0",
        "name": "x0tta6bl4",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kube_proxy_config(kubeconfig: str, cluster_cidr: str, hostname: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "mode": "iptables",
        "clusterCIDR": cluster_cidr,
        "hostnameOverride": hostname,
        "bindAddress": "0.0.0.0",  # noqa: S104 - inside the node's network namespace
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # conntrack limits are kernel-wide (writable only from the host's namespace): leave
        # them as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "1s"},
    }


def kube_router_rbac() -> dict[str, Any]:
    """What kube-router's NetworkPolicy controller reads, for its own user (its client cert)."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "x0tta6bl4:kube-router"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "apiGroups": ["networking.k8s.io"],
                        "resources": ["networkpolicies"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                    {
                        "apiGroups": ["coordination.k8s.io"],
                        "resources": ["leases"],
                        "verbs": ["get", "create", "update"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "x0tta6bl4:kube-router"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "x0tta6bl4:kube-router",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "system:x0tta6bl4:kube-router",
                    }
                ],
            },
        ],
    }


def coredns(image: str, dns_ip: str) -> dict[str, Any]:
    """CoreDNS as Kubernetes ships it (kube-system/coredns, Service kube-dns), 2 replicas."""
    labels = {"k8s-app": "kube-dns"}
    corefile = """.:53 {
    errors
    health {
        lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    prometheus :9153
    cache 30
    loop
    reload
    loadbalance
}
"""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:coredns",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}
                ],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": corefile},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": "coredns",
                            "priorityClassName": "system-cluster-critical",
                            "dnsPolicy": "Default",
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 65532,
                                "runAsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"},
                                # Port 53 without a capability (a namespaced, "safe" sysctl).
                                "sysctls": [
                                    {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
                                ],
                            },
                            "containers": [
                                {
                                    "name": "coredns",
                                    "image": image,
                                    "imagePullPolicy": "IfNotPresent",
                                    "args": ["-conf", "/etc/coredns/Corefile"],
                                    "ports": [
                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                        {
                                            "name": "metrics",
                                            "containerPort": 9153,
                                            "protocol": "TCP",
                                        },
                                    ],
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "70Mi"},
                                        "limits": {"memory": "170Mi"},
                                    },
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]},
                                    },
                                    "livenessProbe": {
                                        "httpGet": {"path": "/health", "port": 8080},
                                        "periodSeconds": 10,
                                    },
                                    "readinessProbe": {
                                        "httpGet": {"path": "/ready", "port": 8181},
                                        "periodSeconds": 2,
                                    },
                                    "volumeMounts": [
                                        {
                                            "name": "config",
                                            "mountPath": "/etc/coredns",
                                            "readOnly": True,
                                        }
                                    ],
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "clusterIP": dns_ip,
                    "selector": labels,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                        {"name": "metrics", "port": 9153, "protocol": "TCP"},
                    ],
                },
            },
        ],
    }


def storage(volumes: list[tuple[str, str, str]]) -> dict[str, Any]:
    """StorageClasses ``standard`` (default) and the guide's ``fast-ssd``, backed by a pool of
    local PersistentVolumes (kubernetes.io/no-provisioner, bound when the pod is scheduled).

    ``volumes`` is (node, directory, name), VOLUMES_PER_NODE per node: three of each node's
    volumes are ``fast-ssd``, one is ``standard``.
    """
    classes = ["fast-ssd", "standard"]
    items: list[dict[str, Any]] = []
    for name in classes:
        sc: dict[str, Any] = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        }
        if name == "standard":
            sc["metadata"]["annotations"] = {"storageclass.kubernetes.io/is-default-class": "true"}
        items.append(sc)
    for i, (node, path, name) in enumerate(volumes):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {"x0tta6bl4.io/local-volume": "true"}},
                "spec": {
                    "capacity": {"storage": "20Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": classes[0] if i % VOLUMES_PER_NODE < 3 else classes[1],
                    "local": {"path": path},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [node],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def metrics_server(image: str, ca_pem: str) -> dict[str, Any]:
    """metrics-server in kube-system and its APIService v1beta1.metrics.k8s.io (the Metrics API
    of the guide's HPA and `kubectl top`). It verifies kubelets with the cluster CA."""
    labels = {"k8s-app": "metrics-server"}
    rb = "rbac.authorization.k8s.io/v1"

    def binding(
        kind: str, name: str, role_kind: str, role: str, ns: str | None = None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if ns:
            meta["namespace"] = ns
        return {
            "apiVersion": rb,
            "kind": kind,
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": [
                {"kind": "ServiceAccount", "name": "metrics-server", "namespace": "kube-system"}
            ],
        }

    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "metrics-server", "namespace": "kube-system"},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "metrics-server-kubelet-ca", "namespace": "kube-system"},
                "data": {"ca.crt": ca_pem},
            },
            {
                "apiVersion": rb,
                "kind": "ClusterRole",
                "metadata": {
                    "name": "system:aggregated-metrics-reader",
                    "labels": {
                        "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                        "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                        "rbac.authorization.k8s.io/aggregate-to-view": "true",
                    },
                },
                "rules": [
                    {
                        "apiGroups": ["metrics.k8s.io"],
                        "resources": ["pods", "nodes"],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
            {
                "apiVersion": rb,
                "kind": "ClusterRole",
                "metadata": {"name": "system:metrics-server"},
                "rules": [
                    {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                    {
                        "apiGroups": [""],
                        "resources": ["pods", "nodes"],
                        "verbs": ["get", "list", "watch"],
                    },
                ],
            },
            binding(
                "RoleBinding",
                "metrics-server-auth-reader",
                "Role",
                "extension-apiserver-authentication-reader",
                "kube-system",
            ),
            binding(
                "ClusterRoleBinding",
                "metrics-server:system:auth-delegator",
                "ClusterRole",
                "system:auth-delegator",
            ),
            binding(
                "ClusterRoleBinding",
                "system:metrics-server",
                "ClusterRole",
                "system:metrics-server",
            ),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "metrics-server",
                    "namespace": "kube-system",
                    "labels": labels,
                },
                "spec": {
                    "selector": labels,
                    "ports": [
                        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
                    ],
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "metrics-server",
                    "namespace": "kube-system",
                    "labels": labels,
                },
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": "metrics-server",
                            "priorityClassName": "system-cluster-critical",
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "containers": [
                                {
                                    "name": "metrics-server",
                                    "image": image,
                                    "imagePullPolicy": "IfNotPresent",
                                    "args": [
                                        "--cert-dir=/tmp",
                                        "--secure-port=10250",
                                        "--kubelet-preferred-address-types=InternalIP",
                                        "--kubelet-use-node-status-port",
                                        "--kubelet-certificate-authority=/etc/kubelet-ca/ca.crt",
                                        "--metric-resolution=15s",
                                    ],
                                    "ports": [
                                        {"name": "https", "containerPort": 10250, "protocol": "TCP"}
                                    ],
                                    "readinessProbe": {
                                        "httpGet": {
                                            "path": "/readyz",
                                            "port": "https",
                                            "scheme": "HTTPS",
                                        },
                                        "periodSeconds": 10,
                                        "initialDelaySeconds": 5,
                                    },
                                    "livenessProbe": {
                                        "httpGet": {
                                            "path": "/livez",
                                            "port": "https",
                                            "scheme": "HTTPS",
                                        },
                                        "periodSeconds": 10,
                                    },
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "100Mi"},
                                        "limits": {"memory": "300Mi"},
                                    },
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]},
                                    },
                                    "volumeMounts": [
                                        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                                        {
                                            "name": "kubelet-ca",
                                            "mountPath": "/etc/kubelet-ca",
                                            "readOnly": True,
                                        },
                                    ],
                                }
                            ],
                            "volumes": [
                                {"name": "tmp", "emptyDir": {}},
                                {
                                    "name": "kubelet-ca",
                                    "configMap": {"name": "metrics-server-kubelet-ca"},
                                },
                            ],
                        },
                    },
                },
            },
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": "v1beta1.metrics.k8s.io", "labels": labels},
                "spec": {
                    "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                    "group": "metrics.k8s.io",
                    "version": "v1beta1",
                    # metrics-server serves with a self-signed certificate it makes at start.
                    "insecureSkipTLSVerify": True,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            },
        ],
    }
