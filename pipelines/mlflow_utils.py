"""Every MLflow call of vssflow lives here (STYLE.md rule 13): tracking store, runs, logging, model registry.

* Tracking URI: from the config (``--mlflow-uri``), else ``$MLFLOW_TRACKING_URI``, else the one local store
  ``./runs/mlflow.db`` (:func:`store_uri`; embedded SQLite, nothing to start) with the artifacts next to it in
  ``./runs/mlartifacts``. ``train`` and ``evaluate`` share that default, and an evaluation run is a child of the
  training run of its model when that run is in the store, so ``mlflow ui --backend-store-uri
  sqlite:///runs/mlflow.db`` shows a model's training with its evaluations under it. Any server URI (``http://...``,
  ``postgresql://...``) works.
* Training logs from rank 0 only: params (the full resolved config, flattened, and the data version), per-step
  metrics, audio samples (.wav) and spectrogram images (.png) of fixed validation clips, system metrics.
* The final model is logged as an MLflow **pyfunc** model wrapping the ``save_pretrained`` directory, with a signature
  (:func:`model_signature`: a features .npz per clip in, its waveform out, params steps/cfg/seed), and registered
  under a name, with the registry alias ``champion`` moved to it (aliases, not the deprecated stages); Serve (or
  anyone) loads it back from ``models:/<name>@champion`` or ``models:/<name>/<version>`` with
  :func:`load_registered_generator` (or ``mlflow.pyfunc.load_model(uri).unwrap_python_model().generator``). Its
  ``pip_requirements`` are the exact versions it was trained with (:func:`pip_requirements`).
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "vssflow"
MODEL_ARTIFACT = "model_dir"
CHAMPION = "champion"  # the registry alias training moves to the version it registers
# What loading a logged model needs (the Generator: torch + the library's own dependencies), pinned at log time.
_RUNTIME_PACKAGES = ("vssflow", "torch", "torchaudio", "numpy", "scipy", "safetensors", "einops", "soundfile",
                     "transformers", "num2words")  # fmt: skip


def pip_requirements() -> list[str]:
    """``name==version`` of the packages a logged model needs, as installed here (what it was trained with)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in _RUNTIME_PACKAGES]


LOCAL_STORE = Path("runs") / "mlflow.db"  # the default store of train and evaluate, under the current directory


def default_tracking_uri(run_dir: str | os.PathLike) -> str:
    """An embedded store: a SQLite file in ``run_dir`` (an experiment's own store)."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def store_uri(tracking_uri: str | None = None) -> str:
    """The store a run is logged to: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``./runs/mlflow.db``
    (:data:`LOCAL_STORE`, its directory created), the one default of ``train`` and ``evaluate``."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    LOCAL_STORE.parent.mkdir(parents=True, exist_ok=True)
    return default_tracking_uri(LOCAL_STORE.parent)


def run_experiment(run_id: str, *, tracking_uri: str) -> str | None:
    """The experiment name of run ``run_id`` in the store, or None when the store has no such run."""
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return client.get_experiment(run.info.experiment_id).name


def _artifact_root(tracking_uri: str) -> str | None:
    # Keep the artifacts beside a local SQLite store (MLflow's default would be ./mlruns of the current directory).
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment id of ``name`` in the store at ``tracking_uri`` (created when missing)."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(tracking_uri))
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params are flat key/value strings)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def create_run(
    tracking_uri: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run (not left active in this process), log ``params`` (flattened); returns its id."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(
        get_or_create_experiment(tracking_uri, experiment), run_name=run_name, tags=dict(tags or {})
    )
    flat = {k: str(v)[:6000] for k, v in flatten(params or {}).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]])
    return run.info.run_id


class RunLogger:
    """An MLflow run of one training job (use on rank 0 only).

    Args:
        tracking_uri: MLflow store.
        experiment: experiment name (created when missing).
        run_name: shown in the UI.
        run_id: continue this run (``--resume``) instead of starting a new one.
        system_metrics: sample CPU / memory / disk / network every few seconds into the run (``system/*``).
        flush_every: per-step metrics are kept in memory and written in one ``log_batch`` once they span this many
            steps (and by :meth:`flush` / :meth:`end`): one store transaction per N steps instead of one per step,
            which on a SQLite store cost ~25 ms of a ~65 ms tiny-preset step. 1 writes every call.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        run_id: str | None = None,
        system_metrics: bool = True,
        tags: Mapping[str, str] | None = None,
        flush_every: int = 1,
    ):
        self.tracking_uri = tracking_uri
        self.flush_every = max(1, flush_every)
        self._pending: list[mlflow.entities.Metric] = []
        self._pending_from: int | None = None  # first step in the buffer
        experiment_id = get_or_create_experiment(tracking_uri, experiment)
        self.client = MlflowClient(tracking_uri)
        if system_metrics:
            mlflow.set_system_metrics_sampling_interval(2)
            mlflow.set_system_metrics_samples_before_logging(1)
        self.run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id else run_name,
            log_system_metrics=system_metrics,
            tags=dict(tags or {}),
        )
        self.run_id = self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a nested config; keys already logged with the same value (a resumed run) are skipped."""
        logged = self.client.get_run(self.run_id).data.params
        flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
        new = {k: v for k, v in flat.items() if k not in logged}
        if new:
            mlflow.log_params(new, run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at ``step`` (timestamped now); written when the buffer spans ``flush_every`` steps."""
        now = int(time.time() * 1000)
        self._pending += [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._pending_from = step if self._pending_from is None else self._pending_from
        if step - self._pending_from + 1 >= self.flush_every or len(self._pending) >= 900:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics (one ``log_batch``, at most 1000 metrics per call as MLflow requires)."""
        items, self._pending, self._pending_from = self._pending, [], None
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_audio(self, wav: np.ndarray, sample_rate: int, name: str, *, step: int) -> None:
        """Write ``wav`` (N,) as ``samples/step_<step>/<name>.wav``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.wav"
            sf.write(path, np.asarray(wav, np.float32), sample_rate, subtype="PCM_16")
            self.client.log_artifact(self.run_id, str(path), artifact_path=f"samples/step_{step:06d}")

    def log_spectrogram(self, mels: Mapping[str, np.ndarray], name: str, *, step: int) -> None:
        """One PNG with a row per (T_mel, 64) log-mel in ``mels`` (e.g. generated vs target)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(mels), 1, figsize=(8, 2.2 * len(mels)), squeeze=False)
        for ax, (title, mel) in zip(axes[:, 0], mels.items(), strict=True):
            ax.imshow(np.asarray(mel).T, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("mel bin")
        axes[-1, 0].set_xlabel("frame (10 ms)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.png"
            path.write_bytes(buf.getvalue())
            self.client.log_artifact(self.run_id, str(path), artifact_path=f"samples/step_{step:06d}")

    def log_artifacts(self, local_dir: str | os.PathLike, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        mlflow.end_run(status=status)


# ---- the model flavour ------------------------------------------------------------------------------------------


FEATURES_COLUMN = "features"  # the pyfunc input: one row per clip, its conditions as a features .npz
AUDIO_COLUMN = "audio"


class VssflowModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a ``save_pretrained`` directory: ``load_context`` rebuilds the :class:`Generator`.

    ``predict`` takes what :func:`model_signature` declares: a table with one row per clip whose ``features`` column
    holds the clip's conditions as the ``.npz`` of ``POST /v1/generate/features``
    (:func:`vssflow.data.features_file.features_to_npz`), and the params ``steps``, ``cfg``, ``seed``; it returns each
    clip's 16 kHz waveform (float32). Serve uses ``unwrap_python_model().generator`` directly.
    """

    def load_context(self, context) -> None:
        from vssflow.generator import Generator

        self.model_dir = context.artifacts[MODEL_ARTIFACT]
        self.generator = Generator.from_pretrained(self.model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[np.ndarray]:
        from vssflow.data.features_file import read_features_file

        params = dict(params or {})
        seed = int(params.pop("seed", 0))
        rows = list(model_input[FEATURES_COLUMN])
        clips = [read_features_file(bytes(b), source=f"{FEATURES_COLUMN}[{i}]") for i, b in enumerate(rows)]
        return [self.generator.generate(c, seed=seed + i, **params) for i, c in enumerate(clips)]


def model_signature(model_dir: str | os.PathLike):
    """The logged model's signature: input a ``features`` (binary) column, one ``.npz`` per clip; output an ``audio``
    column, the clip's waveform (float32 at 16 kHz); params ``steps``, ``cfg`` (the model's own sampling defaults)
    and ``seed`` (clip i uses seed + i)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    from vssflow.model_dir import read_model_config
    from vssflow.sampling import SamplingConfig

    sampling = SamplingConfig(**read_model_config(model_dir).get("sampling", {}))
    return ModelSignature(
        inputs=Schema([ColSpec("binary", FEATURES_COLUMN)]),
        outputs=Schema([ColSpec(Array("float"), AUDIO_COLUMN)]),
        params=ParamSchema(
            [
                ParamSpec("steps", "long", sampling.steps),
                ParamSpec("cfg", "double", sampling.cfg_scale),
                ParamSpec("seed", "long", 0),
            ]
        ),  # fmt: skip
    )


def log_and_register_model(
    model_dir: str | os.PathLike,
    *,
    run_id: str,
    tracking_uri: str,
    registered_name: str = "vssflow",
    alias: str | None = CHAMPION,
) -> str:
    """Log ``model_dir`` as a pyfunc model in ``run_id``, register it and point the registry ``alias`` at the new
    version (None: no alias); returns the ``models:/name/version`` URI."""
    mlflow.set_tracking_uri(tracking_uri)
    active = mlflow.active_run()
    ctx = None
    if active is None or active.info.run_id != run_id:
        # the fluent API refuses a run outside the process's active experiment (left by any earlier set_experiment)
        mlflow.set_experiment(experiment_id=MlflowClient(tracking_uri).get_run(run_id).info.experiment_id)
        ctx = mlflow.start_run(run_id=run_id)
    try:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=VssflowModel(),
            # abspath, not resolve: a model directory is a symlink to a hidden version; the artifact keeps its name
            artifacts={MODEL_ARTIFACT: os.path.abspath(model_dir)},
            pip_requirements=pip_requirements(),
            signature=model_signature(model_dir),
            registered_model_name=registered_name,
        )
    finally:
        if ctx is not None:
            mlflow.end_run()
    version = info.registered_model_version
    if alias:
        MlflowClient(tracking_uri).set_registered_model_alias(registered_name, alias, str(version))
    return f"models:/{registered_name}/{version}"


def download_registered_model_dir(model_uri: str, *, tracking_uri: str, dst: str | os.PathLike | None = None) -> Path:
    """Local path of the ``save_pretrained`` directory of a registered model (``models:/name/version``,
    ``models:/name@alias``)."""
    mlflow.set_tracking_uri(tracking_uri)
    root = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=None if dst is None else str(dst))
    # pyfunc stores the artifact under artifacts/<the logged directory's own name>, so find it by its content.
    hits = sorted(p for p in Path(root).rglob("config.json") if (p.parent / "model.safetensors").exists())
    if not hits:
        raise FileNotFoundError(f"{model_uri}: no vssflow model directory (config.json + model.safetensors) in it")
    return hits[0].parent


def load_registered_generator(model_uri: str, *, tracking_uri: str):
    """The :class:`vssflow.generator.Generator` of a registered model (what Serve calls)."""
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().generator


def run_metrics(run_id: str, *, tracking_uri: str) -> dict[str, list[tuple[int, float]]]:
    """All metric histories of a run: name -> [(step, value), ...] (used by tests and reports)."""
    client = MlflowClient(tracking_uri)
    names = client.get_run(run_id).data.metrics.keys()
    return {n: [(m.step, m.value) for m in client.get_metric_history(run_id, n)] for n in names}


def run_artifacts(run_id: str, *, tracking_uri: str, path: str | None = None) -> list[str]:
    """Artifact paths of a run, recursively."""
    client = MlflowClient(tracking_uri)
    out, todo = [], [path]
    while todo:
        for f in client.list_artifacts(run_id, todo.pop()):
            (todo.append(f.path) if f.is_dir else out.append(f.path))
    return out


# ---- runs driven by id (evaluation / experiments; added by the evaluation work) --------------------------------


def log_run_metrics(run_id: str, metrics: Mapping[str, float], *, tracking_uri: str, step: int = 0) -> None:
    """Log finite ``metrics`` to an existing run (no active run needed)."""
    import math
    import time

    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    items = [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])


def log_run_artifacts(
    run_id: str, local_dir: str | os.PathLike, *, tracking_uri: str, artifact_path: str | None = None
) -> None:
    """Upload a directory's files to a run's artifacts."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)


def finish_run(run_id: str, *, tracking_uri: str, status: str = "FINISHED") -> None:
    """Mark a run created with :func:`create_run` as ended."""
    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


@contextmanager
def failed_on_error(run_id: str, *, tracking_uri: str) -> Iterator[None]:
    """Mark the run FAILED (KILLED on Ctrl-C) when the block raises, then let the error through: a job that dies
    must not stay RUNNING in the store. The block's own error wins over a store that cannot be reached."""
    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            finish_run(run_id, tracking_uri=tracking_uri, status=status)
        except Exception as store_err:  # noqa: BLE001 - reported, then the original error is raised
            print(f"vssflow: could not mark MLflow run {run_id} {status} ({type(store_err).__name__}: {store_err})")
        raise


def log_run_file(run_id: str, path: str | os.PathLike, *, tracking_uri: str, artifact_path: str | None = None) -> None:
    """Upload one file to a run's artifacts."""
    MlflowClient(tracking_uri).log_artifact(run_id, str(path), artifact_path=artifact_path)
