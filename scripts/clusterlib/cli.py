"""Command line of scripts/cluster (every flag also has an X0_CLUSTER_... environment variable)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from clusterlib.cluster import Cluster
from clusterlib.util import ClusterError, log

__all__ = ["main"]


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"X0_CLUSTER_{name}", default)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    default_dir = _env("DIR", str(Path.cwd() / ".cluster"))
    up = sub.add_parser("up", help="start a cluster (or resume the one in --dir)")
    up.add_argument(
        "--nodes",
        type=int,
        default=int(_env("NODES", "3") or 3),
        help="worker nodes (default 3; X0_CLUSTER_NODES)",
    )
    up.add_argument(
        "--dir",
        type=Path,
        default=default_dir,
        help="state directory (default ./.cluster; X0_CLUSTER_DIR)",
    )
    up.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        help="an extra OCI archive to load into every node",
    )
    up.add_argument(
        "--no-mesh-image",
        action="store_true",
        default=_env("NO_MESH_IMAGE") == "1",
        help="do not build and load the x0tta6bl4 image (X0_CLUSTER_NO_MESH_IMAGE=1)",
    )
    for name, text in (
        ("down", "stop the cluster in --dir and remove everything it made"),
        ("staging", "the guide's Deployment Steps on the cluster in --dir"),
        ("status", "print what runs where"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--dir", type=Path, default=default_dir, help="state directory (X0_CLUSTER_DIR)"
        )
        if name == "staging":
            p.add_argument(
                "--no-check",
                action="store_true",
                default=_env("NO_CHECK") == "1",
                help="return once the release is installed, without waiting for check --post "
                "(X0_CLUSTER_NO_CHECK=1)",
            )
            p.add_argument(
                "--no-spire",
                action="store_true",
                default=_env("NO_SPIRE") == "1",
                help="install the mesh with spiffe disabled and no SPIRE release "
                "(X0_CLUSTER_NO_SPIRE=1)",
            )
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir)
    try:
        if args.command == "up":
            cluster.up(args.nodes, args.image, not args.no_mesh_image)
        elif args.command == "down":
            problems = cluster.down()
            if problems:
                log("left behind:\n  " + "\n  ".join(problems))
                return 1
        elif args.command == "staging":
            from clusterlib.staging import staging

            staging(cluster, check=not args.no_check, spire=not args.no_spire)
        elif args.command == "status":
            print(cluster.describe())
    except ClusterError as exc:
        log(f"cluster: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
