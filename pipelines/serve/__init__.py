"""``vssflow serve``: the generator as an HTTP service (Ray Serve + FastAPI), with a web page at ``/``.

Three deployments, each sized and scaled on its own (``autoscaling_config``, ``num_cpus``/``num_gpus``):

    Api (FastAPI ingress, ~0 CPU)  --bytes-->  FeatureExtractor (CPU: decoding + encoders)
                                   --ClipFeatures-->  GeneratorServer (the DiT; batching)

* ``POST /v1/generate``  multipart: ``video`` file, optional ``transcript``, optional ``reference_voice`` file,
  optional ``speech_span`` ("START,END" seconds where the words are; default: where the mouth moves, else the whole
  video), ``task``, ``steps``, ``cfg``, ``seed``, ``output`` ("wav" or "mp4") -> audio/wav or video/mp4 (video copied).
* ``POST /v1/generate/features``  multipart: ``features`` (.npz with sem/lip/sync/phonemes/speaker/duration_s/task and
  optional speech_span (2,) / phoneme_durations (P,), or a one-row Parquet file of our shard schema), ``steps``,
  ``cfg``, ``seed`` -> audio/wav.
* ``GET /healthz`` (process up), ``/readyz`` (both model deployments answer), ``/v1/stats`` (in-flight requests and
  recent batch sizes), ``/openapi.json`` + ``/docs`` (FastAPI), ``/`` the web page.
* Every response carries ``X-Request-Id`` (Ray Serve's request id: the client's own when it sends one, which is
  also the id in the error bodies and the replica logs); generations also ``X-Seed`` (drawn when not given: send
  it back to get the same audio), ``X-Speech-Span`` ("START,END" seconds the phonemes were laid over, or "none")
  with ``X-Speech-Span-Source`` (user, features, mouth, clip), ``X-Batch-Size`` (requests in the generation batch),
  ``X-Group-Size`` (of
  those, the ones generated together in one tensor batch) and ``Server-Timing`` (ms: ``queue`` waiting for a
  batch, ``generate`` the batch's generation, ``ingress`` everything inside the HTTP deployment).

The generator batches concurrent requests and splits each batch into groups of one shape: same task, duration
bucket (the shard buckets, so padding is bounded) and sampling options. A batch is formed when the compute thread
is free, from every request waiting then (up to ``max_batch_size``; Ray Serve's ``@serve.batch`` formed it when its
first request arrived and held it, small, while the previous batch ran). A request alone in the generator replica
starts at once; only right after a batch does the next wait (up to ``batch_wait_timeout_s``) to fill.

Bad input never reaches a 5xx: limits on upload bytes counted as they arrive, on what compressed uploads unpack to,
on video duration, frame size and decoded pixels and on reference-voice length (413), corrupt or non-video uploads,
non-finite features, unknown fields, out-of-range steps/cfg/seed (422, one-line ``detail``); a body that does not
arrive in ``body_timeout_s`` is a 408, work past ``request_timeout_s`` a 504 (the generation is cancelled). A work
slot (``max_inflight``) is taken once the body is read, ``max_queued`` more wait for one, further requests get 503
with ``Retry-After``. With ``api_token_file`` every ``/v1/*`` route needs ``Authorization: Bearer``; without it
cross-site posts are refused (:mod:`.auth`). Uploads live in a fresh directory per request under ``upload_dir``,
removed in ``finally``; no request parameter is ever used as a path, and only bytes travel between deployments
(each replica downloads an MLflow model itself). The threat model and the tests: docs/security.md.

Metrics (Prometheus, through Ray's metrics agent): ``vssflow_requests_total{route,task,status}``,
``vssflow_request_seconds{route,task}``, ``vssflow_inflight``, ``vssflow_batch_size``, ``vssflow_group_size``,
plus Ray Serve's own ``ray_serve_*`` series.

The package, one concept a file: :mod:`.config` (what runs), :mod:`.forms` (request fields and the HTTP error),
:mod:`.limits` (body bytes and time, work slots), :mod:`.auth` (the API token, the same-origin check),
:mod:`.extractor` and :mod:`.generator` (the two model deployments), :mod:`.ingress` (the FastAPI front),
:mod:`.app` (the bind graph, the application builder of a RayService, the ``serve`` command). A ``--model`` URI is
resolved by :mod:`pipelines.model_uri`; the ``.npz``/Parquet upload of ``/v1/generate/features`` is parsed with the
schema, in :mod:`vssflow.data.features_file`.
"""

from pipelines.model_uri import resolve_model_dir
from pipelines.serve.app import add_arguments, build_app, build_app_from_args, config_from_args, run, start
from pipelines.serve.config import Scaling, ServeConfig, replace_config

__all__ = [
    "Scaling",
    "ServeConfig",
    "add_arguments",
    "build_app",
    "build_app_from_args",
    "config_from_args",
    "replace_config",
    "resolve_model_dir",
    "run",
    "start",
]
