"""What ``vssflow serve`` runs: the deployments' resources and the service's limits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# The environment of every replica (the deployments' runtime_env), measured with bench_serve's tiny model at
# concurrency 1 on a loaded 2-core machine (docs/performance.md, issue 16):
# - Ray starts its worker processes ``worker_niceness`` (15) above the raylet's priority, so that a node's control
#   plane stays responsive under CPU-bound tasks. A replica is the service itself: at +15 it got about a twentieth
#   of a normal process's CPU share beside other work, and its generate() took 12-41 ms longer than the same call
#   in the process that started Ray (-2 to +0 ms at the same priority). Replicas run at the priority of their Ray.
# - User code on the replica's own event loop, and a handle's router on the caller's loop (what Ray Serve's
#   RAY_SERVE_THROUGHPUT_OPTIMIZED sets): two thread hand-offs fewer per call, 3-6 ms less per request. Every
#   deployment here keeps its loop free: generations, extraction and file work run in threads.
REPLICA_ENV = {"RAY_worker_niceness": "0", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
               "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}  # fmt: skip


@dataclass(frozen=True)
class Scaling:
    """Resources and autoscaling of one deployment."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 32
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources (e.g. a node pool's)

    def options(self) -> dict:
        actor = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}}
        return {
            "ray_actor_options": {**actor, "resources": dict(self.resources)} if self.resources else actor,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
        }


@dataclass(frozen=True)
class DubService:
    """``POST /v1/dub`` (:mod:`pipelines.serve.dub`): whole videos dubbed from their subtitles, as jobs.

    Attributes:
        max_jobs: jobs admitted and not finished (queued or running) at once; one more gets 503 + Retry-After.
            The worker runs one job at a time (a dub batches its cue windows itself); the others wait their turn.
        max_video_seconds: longest video accepted (413).
        result_ttl_s: how long a finished job's status and files are kept; then they are deleted (410 Gone).
        batch: cue windows per generation call (:class:`vssflow.dub.DubConfig`).
        jobs_dir: where each job's uploads and results live (default: a fresh temporary directory).
        worker: resources of the DubWorker deployment (its own copy of the model). Always one replica: the job
            table lives in it.
    """

    max_jobs: int = 4
    max_video_seconds: float = 600.0
    result_ttl_s: float = 3600.0
    batch: int = 8
    jobs_dir: str | None = None
    worker: Scaling = field(default_factory=lambda: Scaling(max_ongoing_requests=256))


@dataclass(frozen=True)
class ServeConfig:
    """What ``vssflow serve`` runs.

    Attributes:
        model: a model directory (a path every replica's node sees: a shared volume) or an MLflow URI, which each
            replica downloads itself where it runs (:func:`replica_model_dir`): no path crosses deployments.
        tracking_uri: the MLflow tracking URI of a ``model`` URI.
        device: torch device of the generator ("cpu", "cuda"; cuda needs ``generator.num_gpus`` > 0).
        extractor_device: torch device of the feature extractors ("cpu" by default: decoding is CPU work; cuda
            needs ``extractor.num_gpus`` > 0). :func:`check_devices` refuses a device without its GPU share.
        max_upload_mb: largest request body (413 above it).
        max_video_seconds: longest video accepted (413); longer than the model window is fine (windows).
        max_pixels: largest frame (width * height) accepted (413).
        max_decoded_pixels: most pixels the decoding of one video may hold (25 frames a second at the decode size,
            whose short side is at most 360): a minute of 640x360 by default; a wide or long video over it gets 413.
        max_reference_seconds: longest reference voice (413); it is never decoded past this, whatever its header.
        probe_timeout_s: ffprobe's time to read an upload's header; longer is a 504 with a message.
        max_steps, max_cfg: bounds of the sampling options (422 outside).
        max_inflight: requests worked on at once (a slot is taken once the body is read); max_queued more wait
            for a slot, any further one gets 503 + Retry-After.
        body_timeout_s: the whole request body must arrive within it (408 after).
        request_timeout_s: the work after the body (waiting for a slot, extraction, generation) must end within it:
            504 after, and the generation still running is cancelled.
        retry_after_s: the Retry-After value.
        max_batch_size, batch_wait_timeout_s: batching of the generator (:class:`.generator.GeneratorServer`).
        compile: the generator's DiT through torch.compile at bucket shapes (:meth:`vssflow.Generator.compile`):
            each (batch size, length bucket) compiles on its first request, later ones are faster on a GPU.
        upload_dir: parent of the per-request upload directories (default: a fresh temporary directory).
        api_token_file: a file holding the API token every /v1/* request must send as ``Authorization: Bearer``
            (:mod:`pipelines.serve.auth`); each Api replica reads it. None: no token, cross-site posts refused.
        ingress, extractor, generator: resources and autoscaling of each deployment.
        dub: the dubbing jobs (:class:`DubService`); None: no DubWorker, ``POST /v1/dub`` answers 501.
    """

    model: str
    tracking_uri: str | None = None
    device: str = "cpu"
    extractor_device: str = "cpu"
    max_upload_mb: float = 50.0
    max_video_seconds: float = 60.0
    max_pixels: int = 1920 * 1080
    max_decoded_pixels: int = 60 * 25 * 640 * 360
    max_reference_seconds: float = 30.0
    probe_timeout_s: float = 30.0
    max_steps: int = 200
    max_cfg: float = 20.0
    max_inflight: int = 16
    max_queued: int = 16
    body_timeout_s: float = 60.0
    request_timeout_s: float = 300.0
    retry_after_s: int = 2
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    compile: bool = False
    upload_dir: str | None = None
    api_token_file: str | None = None
    ingress: Scaling = field(default_factory=lambda: Scaling(num_cpus=0.0, max_ongoing_requests=1000))
    extractor: Scaling = field(default_factory=Scaling)
    generator: Scaling = field(default_factory=lambda: Scaling(max_ongoing_requests=64))
    dub: DubService | None = None


def check_devices(config: ServeConfig) -> None:
    """Refuse, in one line, a deployment whose device and GPU share disagree: on cuda without a GPU share its
    replica finds no GPU and the application never becomes ready; a GPU share on cpu holds a GPU for nothing."""
    from vssflow.errors import VssflowError

    for name, device, scaling, flag, value in (
        ("generator", config.device, config.generator, "--generator-gpus", "serve.generator.gpus_per_replica"),
        ("extractor", config.extractor_device, config.extractor, "--extractor-gpus", "serve.features.gpus_per_replica"),
    ):
        on_gpu = str(device).strip().lower().startswith("cuda")
        if on_gpu and scaling.num_gpus <= 0:
            raise VssflowError(f"{name}: device {device} without a GPU share; give {flag} > 0 ({value} in "
                               f"cluster/values.yaml), or device cpu")  # fmt: skip
        if not on_gpu and scaling.num_gpus > 0:
            raise VssflowError(f"{name}: {scaling.num_gpus:g} GPUs for a {device} deployment; give device cuda, "
                               f"or {flag} 0 ({value})")  # fmt: skip


def replica_model_dir(model: str, config: ServeConfig) -> str:
    """The model directory of the replica that calls it: ``model`` itself, or this replica's own download of an
    MLflow URI (into its own temporary directory: the driver's or another pod's download does not exist here)."""
    from pipelines.model_uri import resolve_model_dir

    return str(resolve_model_dir(model, tracking_uri=config.tracking_uri))


def replace_config(config: ServeConfig, **changes: Any) -> ServeConfig:
    """``dataclasses.replace`` (for benches and tests)."""
    return replace(config, **changes)
