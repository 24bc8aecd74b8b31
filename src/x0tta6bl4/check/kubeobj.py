"""Small readers of Kubernetes objects (plain dicts): readiness, scheduling, quantities.

These follow the API's documented semantics: a pod is ready when its ``Ready`` condition is
``True``; a DaemonSet pod can run on a node whose ``NoSchedule``/``NoExecute`` taints it
tolerates (the DaemonSet controller adds tolerations for the node-condition taints itself)
and whose labels match the pod's ``nodeSelector`` and required node affinity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "DAEMONSET_DEFAULT_TOLERATIONS",
    "QuantityError",
    "condition_true",
    "daemonset_eligible",
    "name_of",
    "parse_quantity",
    "pod_problem",
    "pod_ready",
]

Obj = Mapping[str, Any]

DAEMONSET_DEFAULT_TOLERATIONS: tuple[dict[str, str], ...] = tuple(
    {"key": f"node.kubernetes.io/{key}", "operator": "Exists", "effect": effect}
    for key, effect in (
        ("not-ready", "NoExecute"),
        ("unreachable", "NoExecute"),
        ("disk-pressure", "NoSchedule"),
        ("memory-pressure", "NoSchedule"),
        ("pid-pressure", "NoSchedule"),
        ("unschedulable", "NoSchedule"),
    )
)
"""Tolerations the DaemonSet controller adds to every DaemonSet pod."""


class QuantityError(ValueError):
    """A Kubernetes resource quantity string is malformed."""


_SUFFIX = {
    "Ki": Decimal(1024),
    "Mi": Decimal(1024**2),
    "Gi": Decimal(1024**3),
    "Ti": Decimal(1024**4),
    "Pi": Decimal(1024**5),
    "Ei": Decimal(1024**6),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(1000),
    "M": Decimal(1000**2),
    "G": Decimal(1000**3),
    "T": Decimal(1000**4),
    "P": Decimal(1000**5),
    "E": Decimal(1000**6),
}
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")


def parse_quantity(value: object) -> Decimal:
    """``"500m"`` → 0.5, ``"1Gi"`` → 1073741824, ``2`` → 2."""
    text = str(value).strip()
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError(f"not a Kubernetes quantity: {text!r:.40}")
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:
        raise QuantityError(f"not a Kubernetes quantity: {text!r:.40}") from None


def name_of(obj: Obj) -> str:
    """``metadata.name``."""
    return str((obj.get("metadata") or {}).get("name", "?"))


def condition_true(obj: Obj, kind: str) -> bool:
    """Whether ``status.conditions`` has ``kind`` with status ``"True"``."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return bool(cond.get("status") == "True")
    return False


def pod_ready(pod: Obj) -> bool:
    """Whether the pod is Running and its Ready condition is True."""
    return (pod.get("status") or {}).get("phase") == "Running" and condition_true(pod, "Ready")


def pod_problem(pod: Obj) -> str:
    """Why a pod is not ready, as ``kubectl get pods`` would summarise it."""
    status = pod.get("status") or {}
    reasons: list[str] = []
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        for key in ("waiting", "terminated"):
            if key in state:
                reason = state[key].get("reason") or key
                reasons.append(f"{cs.get('name')}: {reason}")
        if "running" in state and not cs.get("ready"):
            reasons.append(f"{cs.get('name')}: running, not ready")
    if not reasons:
        reasons.append(f"phase {status.get('phase', 'Unknown')}")
    node = (pod.get("spec") or {}).get("nodeName")
    where = f" on {node}" if node else ""
    return f"{name_of(pod)}{where} ({'; '.join(reasons)})"


def _tolerates(toleration: Obj, taint: Obj) -> bool:
    effect = toleration.get("effect")
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key")
    operator = toleration.get("operator", "Equal")
    if not key:
        return bool(operator == "Exists")
    if key != taint.get("key"):
        return False
    return bool(operator == "Exists" or toleration.get("value", "") == taint.get("value", ""))


def _expression_matches(expr: Obj, labels: Mapping[str, str]) -> bool:
    key = expr.get("key", "")
    op = expr.get("operator")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def daemonset_eligible(pod_spec: Obj, node: Obj) -> bool:
    """Whether a DaemonSet pod with ``pod_spec`` would be placed on ``node``."""
    labels = {str(k): str(v) for k, v in ((node.get("metadata") or {}).get("labels") or {}).items()}
    for key, value in (pod_spec.get("nodeSelector") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    required = (
        ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms")
    if required and not any(
        all(_expression_matches(e, labels) for e in term.get("matchExpressions") or [])
        for term in required
    ):
        return False
    tolerations: Iterable[Obj] = [
        *(pod_spec.get("tolerations") or []),
        *DAEMONSET_DEFAULT_TOLERATIONS,
    ]
    tolerations = list(tolerations)
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True
