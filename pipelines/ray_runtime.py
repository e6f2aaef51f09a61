"""Ray start-up, in one place for every command (preprocess, train, evaluate, experiment, generate-batch, serve)."""

from __future__ import annotations

import argparse
import logging
import os

RAY_ADDRESS_HELP = "Ray cluster to join ('auto', ray://HEAD:10001); default: start a private local Ray"
NUM_CPUS_HELP = "logical CPUs of a locally started Ray (default: the machine's)"


def add_ray_arguments(p: argparse.ArgumentParser, *, num_cpus: bool = True) -> None:
    """``--ray-address`` (and ``--num-cpus``, for commands that let the user size a local Ray), the same in every
    command; their values go to :func:`start_ray`."""
    p.add_argument("--ray-address", default=None, metavar="ADDRESS", help=RAY_ADDRESS_HELP)
    if num_cpus:
        p.add_argument("--num-cpus", type=int, default=None, metavar="N", help=NUM_CPUS_HELP)


# Ray's own console noise, cut at its source: in each worker process, the loggers that write it. Ray Train's
# placement-group cleaner polls the State API every second to see whether the train controller is still alive; the
# State API is served by the dashboard, which a private local Ray runs without, so every poll logged "Failed to query
# Ray Train Controller actor state" (392 identical lines in one `make demo`). Only that message is dropped: the
# cleaner's other warnings (a dead controller's placement group removed, or not) still reach the console.
QUIET_MESSAGES = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": (
        "Failed to query Ray Train Controller actor state",
    ),
}
# Ray Train's worker context logs "Reporting training result N: TrainingReport(...)" for every rank at every checkpoint
# through a logger named by its file path (getLogger(__file__)), which RunConfig's LoggingConfig (it filters the
# "ray.train" loggers) does not reach; named here by that path under the installed ray package ("ray:...").
QUIET_LOGGERS = {"ray:train/v2/_internal/execution/context.py": logging.WARNING}
WORKER_SETUP_HOOK = "pipelines.ray_runtime.configure_worker"


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def configure_worker() -> None:
    """The ``worker_process_setup_hook`` of every job :func:`start_ray` starts: runs once in each Ray worker process.

    Drops :data:`QUIET_MESSAGES`, sets :data:`QUIET_LOGGERS` to their levels, and points the worker's State API client
    at its own cluster (``RAY_ADDRESS``): without it the client looks for "the" Ray of the machine and fails with
    "Found multiple active Ray instances" (a traceback from Ray Train's cleaner thread) when tests or other jobs run
    their own Ray beside it.
    """
    import ray

    for name, prefixes in QUIET_MESSAGES.items():
        logging.getLogger(name).addFilter(_DropMessages(prefixes))
    for name, level in QUIET_LOGGERS.items():
        if name.startswith("ray:"):  # a logger named by its module's file (importing Ray Train here costs 0.6 s)
            name = os.path.join(os.path.dirname(ray.__file__), name[4:])
        logging.getLogger(name).setLevel(level)
    if ray.is_initialized():
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def start_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://head:10001``) or start a private local Ray.

    Nothing happens when this process already has Ray (a test session, an experiment that trains and evaluates in one
    Ray). A local Ray is always a new cluster (``address="local"``), never another job's found on this machine, with
    no dashboard and no token auth (it is private to this process); usage statistics are off either way. Every worker
    process of the job runs :func:`configure_worker` first (Ray's noise cut at its source).

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
    runtime_env = {"worker_process_setup_hook": WORKER_SETUP_HOOK}
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, runtime_env=runtime_env)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                 runtime_env=runtime_env)  # fmt: skip
    return True
