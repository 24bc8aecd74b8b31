"""The Kubernetes packaging, rendered and checked with the real tools.

Helm v4 renders charts/x0tta6bl4 with the deployment guide's own values-staging.yaml, the
production overlay and toggles; kubectl's built-in kustomize builds deploy/kustomize; every
object is validated against the Kubernetes 1.28 and 1.35 OpenAPI schemas in strict mode
(kubernetes-validate), CRD objects against their required structure. The guide's inline
manifests (RBAC, NetworkPolicies, quota, HPA, VPA) are parsed out of the guide itself and
compared with what the chart renders. No Docker engine runs here, so the Dockerfile is checked
statically. Golden renders live in tests/golden; regenerate them with UPDATE_GOLDEN=1.

The checks live in ``tests/integration/staging_deployment/``, one module per section; this
module, the one the deployment guide runs (``pytest
tests/integration/test_kubernetes_staging_deployment.py -v``), gathers them.
"""

from __future__ import annotations

from tests.integration.staging_deployment.chart_repository import *  # noqa: F403
from tests.integration.staging_deployment.common import *  # noqa: F403 - marks, fixtures
from tests.integration.staging_deployment.golden import *  # noqa: F403
from tests.integration.staging_deployment.guide_as_written import *  # noqa: F403
from tests.integration.staging_deployment.image import *  # noqa: F403
from tests.integration.staging_deployment.kustomize import *  # noqa: F403
from tests.integration.staging_deployment.lint_and_schemas import *  # noqa: F403
from tests.integration.staging_deployment.monitoring import *  # noqa: F403
from tests.integration.staging_deployment.production import *  # noqa: F403
from tests.integration.staging_deployment.runtime_contract import *  # noqa: F403
from tests.integration.staging_deployment.toggles import *  # noqa: F403

pytestmark = HELM  # noqa: F405
