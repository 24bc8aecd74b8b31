"""The Kubernetes packaging checks, one module per section (see
``tests/integration/test_kubernetes_staging_deployment.py``, which gathers them)."""
