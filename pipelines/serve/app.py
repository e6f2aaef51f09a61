"""The Serve application: the bind graph of the three deployments, the application builder a Serve config file or a
KubeRay RayService imports (``pipelines.serve:build_app_from_args``), and the ``vssflow serve`` command."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import asdict
from pathlib import Path

from ray import serve

from pipelines.devices import actor_gpus, resolve_ray_device
from pipelines.ray_runtime import add_ray_arguments, start_ray
from pipelines.serve.auth import read_token_file
from pipelines.serve.config import DubService, Scaling, ServeConfig, check_devices
from pipelines.serve.dub import DubWorker
from pipelines.serve.extractor import FeatureExtractor
from pipelines.serve.generator import GeneratorServer
from pipelines.serve.ingress import Api
from vssflow.commands.flags import add_mlflow_uri, add_model, mlflow_uri
from vssflow.device import DEVICE_HELP, Device
from vssflow.inference import is_model_uri


def build_app(config: ServeConfig):
    """The Serve application (bind graph) for ``config``.

    Raises:
        VssflowError: a deployment's device without its GPU share, or the reverse (:func:`check_devices`).
    """
    check_devices(config)
    # an MLflow URI as it is (each replica downloads it where it runs), a directory as an absolute path
    model = config.model if is_model_uri(config.model) else str(Path(config.model).resolve())
    extractor = FeatureExtractor.options(name="FeatureExtractor", **config.extractor.options()).bind(model, config)
    generator = GeneratorServer.options(name="GeneratorServer", **config.generator.options()).bind(model, config)
    dubber = None
    if config.dub is not None:  # one replica: the job table lives in it
        options = {**config.dub.worker.options(), "num_replicas": 1}
        del options["autoscaling_config"]
        dubber = DubWorker.options(name="DubWorker", **options).bind(model, config)
    return Api.options(name="Api", **config.ingress.options()).bind(extractor, generator, config, dubber)


def build_app_from_args(args: dict):
    """Application builder for a Serve config file or a KubeRay RayService (``pipelines.serve:build_app_from_args``).

    Args:
        args: see :func:`config_from_service_args`.
    """
    return build_app(config_from_service_args(args))


def config_from_service_args(args: dict) -> ServeConfig:
    """The ServeConfig of a RayService's ``args`` (cluster/k8s/templates/_serve_config.yaml).

    Args:
        args: ``model`` (directory or MLflow URI), ``tracking_uri`` (for URIs; may be empty), ``device`` and
            ``generator_gpus`` (the generator's), ``extractor_device`` and ``extractor_gpus``, ``dub`` ("on" by
            default: ``POST /v1/dub`` with the default :class:`DubService`; "off"), ``api_token_file`` (the
            mounted Secret holding the API token; empty: none), ``compile`` (true: the generator's DiT through
            torch.compile).
    """
    device = str(args.get("device") or "cpu")
    extractor_device = str(args.get("extractor_device") or "cpu")

    def gpus(key: str, dev: str) -> float:
        value = args.get(key)
        return float(value) if value not in (None, "") else (1.0 if dev.startswith("cuda") else 0.0)

    return ServeConfig(
        model=str(args["model"]), tracking_uri=str(args.get("tracking_uri") or "") or None,
        device=device, extractor_device=extractor_device,
        generator=Scaling(num_gpus=gpus("generator_gpus", device), max_ongoing_requests=64),
        extractor=Scaling(num_gpus=gpus("extractor_gpus", extractor_device)),
        dub=None if str(args.get("dub", "on")).lower() == "off" else DubService(),
        api_token_file=str(args.get("api_token_file") or "") or None,
        compile=str(args.get("compile", "")).strip().lower() in ("1", "true", "yes", "on"),
    )  # fmt: skip


def start(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, name: str = "vssflow") -> str:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the app (Ray must be initialised). Returns the URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_mlflow_uri(p, local="none (only an MLflow URI given as --model needs one)", old="--tracking-uri")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_ray_arguments(p)
    p.add_argument(
        "--device",
        default="auto",
        help=f"generator: {DEVICE_HELP} (with --ray-address, auto is cpu: give cuda for the cluster's GPUs)",
    )
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--compile", action="store_true",
                   help="generator: the DiT through torch.compile at bucket shapes (each batch size and length "
                        "bucket compiles on its first request)")  # fmt: skip
    p.add_argument("--max-inflight", type=int, default=16, help="requests worked on at once (after their body)")
    p.add_argument("--max-queued", type=int, default=16, help="requests waiting for a slot before answering 503")
    p.add_argument("--body-timeout", type=float, default=60.0, help="seconds for a request body to arrive (408)")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds for the work after the body (504; the generation is cancelled)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=float, default=50.0)
    p.add_argument("--max-video-seconds", type=float, default=60.0)
    p.add_argument("--generator-cpus", type=float, default=1.0)
    p.add_argument("--generator-gpus", type=float, default=None, help="GPUs per generator replica (default 1 on cuda)")
    p.add_argument("--generator-replicas", default="1", help="N or MIN:MAX (autoscaling)")
    p.add_argument("--extractor-cpus", type=float, default=1.0)
    p.add_argument("--extractor-device", default="cpu", help=f"feature extractors: {DEVICE_HELP} (default cpu)")
    p.add_argument("--extractor-gpus", type=float, default=None, help="GPUs per extractor replica (default 1 on cuda)")
    p.add_argument("--extractor-replicas", default="1", help="N or MIN:MAX (autoscaling)")
    p.add_argument("--upload-dir", default=None, help="where per-request uploads live (removed after each request)")
    p.add_argument("--api-token-file", default=None,
                   help="require 'Authorization: Bearer <the file's content>' on every /v1/* route")  # fmt: skip
    p.add_argument("--dub", choices=("on", "off"), default="on", help="POST /v1/dub: whole videos dubbed as jobs")
    p.add_argument("--dub-max-jobs", type=int, default=4, help="dubbing jobs queued or running at once (then 503)")
    p.add_argument("--dub-max-video-seconds", type=float, default=600.0, help="longest video dubbed (413 above)")
    p.add_argument("--dub-result-ttl", type=float, default=3600.0, help="seconds a finished job's result is kept")
    p.add_argument("--dub-jobs-dir", default=None, help="where dubbing jobs' uploads and results live")
    p.add_argument("--dub-cpus", type=float, default=1.0, help="CPUs of the dubbing worker (its own model copy)")
    p.add_argument(
        "--dub-gpus",
        type=float,
        default=0.0,
        help="GPUs of the dubbing worker (to share one GPU: --generator-gpus 0.5 --dub-gpus 0.5)",
    )


def _replicas(spec: str) -> tuple[int, int]:
    lo, _, hi = spec.partition(":")
    return int(lo), int(hi or lo)


def serve_device(spec: str, ray_address: str | None) -> Device:
    """``--device`` of the generator replicas: a local Ray serves on this machine's GPUs; a cluster's GPUs are not
    known before Ray starts, so there ``cuda`` is taken as given and ``auto`` is the CPU."""
    if ray_address:
        gpus = 1.0 if spec.strip().lower().startswith("cuda") else 0.0
    else:
        import torch

        gpus = float(torch.cuda.device_count())
    return resolve_ray_device(spec, cluster_gpus=gpus)


def config_from_args(args: argparse.Namespace, model_dir: str) -> ServeConfig:
    device = serve_device(args.device, args.ray_address)
    gpus = actor_gpus(device) if args.generator_gpus is None else args.generator_gpus
    extractor_device = serve_device(args.extractor_device, args.ray_address)
    extractor_gpus = actor_gpus(extractor_device) if args.extractor_gpus is None else args.extractor_gpus
    glo, ghi = _replicas(args.generator_replicas)
    elo, ehi = _replicas(args.extractor_replicas)
    return ServeConfig(
        model=model_dir, tracking_uri=mlflow_uri(args), device=str(device), max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000, compile=args.compile, max_inflight=args.max_inflight,
        max_queued=args.max_queued,
        body_timeout_s=args.body_timeout, request_timeout_s=args.request_timeout,
        max_upload_mb=args.max_upload_mb, max_video_seconds=args.max_video_seconds, upload_dir=args.upload_dir,
        api_token_file=None if args.api_token_file is None else str(Path(args.api_token_file).resolve()),
        generator=Scaling(num_cpus=args.generator_cpus, num_gpus=gpus, min_replicas=glo,
                          max_replicas=ghi, max_ongoing_requests=64),
        extractor=Scaling(num_cpus=args.extractor_cpus, num_gpus=extractor_gpus, min_replicas=elo, max_replicas=ehi),
        extractor_device=str(extractor_device),
        dub=None if args.dub == "off" else DubService(
            max_jobs=args.dub_max_jobs, max_video_seconds=args.dub_max_video_seconds,
            result_ttl_s=args.dub_result_ttl, jobs_dir=args.dub_jobs_dir,
            worker=Scaling(num_cpus=args.dub_cpus, num_gpus=args.dub_gpus, max_ongoing_requests=256)),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import ray

    from vssflow.model_dir import read_model_config

    if is_model_uri(args.model):  # downloaded by each replica where it runs (a cluster's pods do not see ours)
        model_dir = args.model
    else:
        read_model_config(args.model)  # fail fast, one line, before starting Ray
        model_dir = str(Path(args.model).resolve())
    if args.api_token_file is not None:
        read_token_file(args.api_token_file)
    config = config_from_args(args, str(model_dir))
    check_devices(config)  # before Ray starts: a device without its GPU share would never become ready
    # Handlers first: a SIGINT/SIGTERM that arrives while Ray and the app start (the app answers /readyz before
    # serve.run returns) stops the server once it is up, instead of being swallowed inside Ray's start-up code.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    start_ray(args.ray_address, num_cpus=args.num_cpus)
    url = start(config, host=args.host, port=args.port)
    print(f"vssflow serve: model {model_dir}; {url}/ (web page), {url}/docs (API), {url}/readyz", flush=True)
    print(f"vssflow serve: config {json.dumps(asdict(config), default=str)}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
        print("vssflow serve: stopping", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
