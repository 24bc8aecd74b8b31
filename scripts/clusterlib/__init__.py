"""scripts/cluster's implementation: a kind-style Kubernetes cluster of network namespaces.

Modules: ``util`` (processes, status lines, waiting), ``pki`` (the cluster's certificates, made
with openssl), ``netns`` (bridge, network and mount namespaces, cgroups), ``components`` (the
pinned binaries and images), ``manifests`` (CoreDNS, RBAC, storage), ``cluster`` (the named
actions of ``up`` and ``down``), ``staging`` (the guide's Deployment Steps), ``cli``.
Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

__all__: list[str] = []
