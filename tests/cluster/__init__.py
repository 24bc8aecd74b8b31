"""Tests on a real Kubernetes cluster made by scripts/cluster (see docs/deployment.md)."""
