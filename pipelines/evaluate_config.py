"""What one ``vssflow evaluate`` runs: :class:`EvalConfig` (STYLE.md rule 5: a frozen dataclass whose defaults are a
quick CPU evaluation; ``vssflow evaluate`` builds one from its flags, the experiment runner from its scale), the
speech-span modes and the experiment an evaluation goes to when its model's training run is not in the store.

It sits below the clip source, the report and the job (:mod:`pipelines.evaluate`), which all take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vssflow.constants import TASKS

SPEECH_SPANS = ("data", "mouth", "clip")
EVAL_EXPERIMENT = "vssflow-eval"  # where an evaluation goes when its model's training run is not in the store


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation job (defaults: a quick CPU evaluation)."""

    model: str
    data: str
    out: str
    manifest: str | None = None
    split: str | None = "test"  # falls back to every split when the split is empty
    tasks: tuple[str, ...] = TASKS
    max_clips: int | dict = 16  # per task: one count for every task, or {task: count} (tasks not named: 16)
    steps: int = 16
    cfg: float | None = None  # None: the model's own default guidance (its config.json)
    seed: int = 0
    validate: int = 2  # clips per task for the metric validation (0: skip)
    asr: str = "auto"
    embedding: str = "whisper-base"
    classifier: str | None = None
    actors: int = 0  # 0: automatic (pipelines.evaluate.eval_actors)
    threads: int = 1
    ray_address: str | None = None
    num_cpus: int | None = None
    mlflow_uri: str | None = None
    experiment: str | None = None  # None: the training run's experiment when the store has it, else vssflow-eval
    run_name: str | None = None
    train_run_id: str | None = None  # default: the model's own (config.json info.mlflow_run_id)
    spectrograms: int = 3
    tags: dict = field(default_factory=dict)
    speech_span: str = "data"  # SPEECH_SPANS: the span the phonemes are laid over (see the module docstring)
    device: str = "cpu"  # --device: auto|cpu|cuda (an actor on cuda takes one GPU and generates in bf16)


DEFAULT_CLIPS = 16


def clips_of(max_clips: int | dict, task: str) -> int:
    """How many clips of ``task`` an evaluation with ``max_clips`` takes."""
    return int(max_clips.get(task, DEFAULT_CLIPS)) if isinstance(max_clips, dict) else int(max_clips)


def parse_max_clips(text: str | int) -> int | dict:
    """``--max-clips``: ``N`` (every task) or ``TASK=N,...`` (e.g. ``v2s=48,tts=16,joint=24``; others 16).

    Raises:
        InputError: not a count, an unknown task, or a count below 1.
    """
    from vssflow.errors import InputError

    fix = "give N or TASK=N,... with tasks of " + ",".join(TASKS) + " and counts >= 1"
    text = str(text).strip()
    try:
        if "=" not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return n
        out = {}
        for part in text.split(","):
            task, n = (x.strip() for x in part.split("="))
            if task not in TASKS or int(n) < 1:
                raise ValueError
            out[task] = int(n)
        return out
    except ValueError:
        raise InputError(f"{text!r}: {fix}", source="--max-clips") from None
