"""Ray start-up, in one place for every command (preprocess, train, evaluate, experiment, generate-batch, serve)."""

from __future__ import annotations

import argparse
import os

RAY_ADDRESS_HELP = "Ray cluster to join ('auto', ray://HEAD:10001); default: start a private local Ray"
NUM_CPUS_HELP = "logical CPUs of a locally started Ray (default: the machine's)"


def add_ray_arguments(p: argparse.ArgumentParser, *, num_cpus: bool = True) -> None:
    """``--ray-address`` (and ``--num-cpus``, for commands that let the user size a local Ray), the same in every
    command; their values go to :func:`start_ray`."""
    p.add_argument("--ray-address", default=None, metavar="ADDRESS", help=RAY_ADDRESS_HELP)
    if num_cpus:
        p.add_argument("--num-cpus", type=int, default=None, metavar="N", help=NUM_CPUS_HELP)


def start_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://head:10001``) or start a private local Ray.

    Nothing happens when this process already has Ray (a test session, an experiment that trains and evaluates in one
    Ray). A local Ray is always a new cluster (``address="local"``), never another job's found on this machine, with
    no dashboard and no token auth (it is private to this process); usage statistics are off either way.

    Args:
        address: the cluster to join; None or "" starts a local one.
        num_cpus: logical CPUs of a local Ray (None: the machine's); ignored when joining a cluster.
        log_to_driver: print the workers' output in this process.

    Returns:
        True when this call started or joined Ray (the caller then shuts it down), False when it was running already.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver)
    return True
