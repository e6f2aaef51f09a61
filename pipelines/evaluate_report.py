"""An evaluation's report: ``report.json`` and ``report.md`` (:func:`write_report`, :func:`render_markdown`: the
three columns generated / ground truth through codec + vocoder / raw ground truth, seen vs unseen speech, the
metric validation), the PNG plots (:func:`write_plots`: spectrograms, the training run's loss curves) and the one
MLflow run of the evaluation (:func:`log_to_mlflow`, a child of the model's training run when the store has it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipelines.evaluate_config import EVAL_EXPERIMENT, EvalConfig
from vssflow.files import write_text_atomic


def _fmt(v: dict | None, *, with_median: bool = False) -> str:
    if not v or v.get("mean") is None or not math.isfinite(v["mean"]):
        return "–"
    ci, med = v.get("ci95"), v.get("median")
    text = f"{v['mean']:.3f}" + (f" ± {ci:.3f}" if ci is not None and math.isfinite(ci) else "")
    if with_median and med is not None and math.isfinite(med):
        text += f", median {med:.3f}"
    return text + f" (n={v['n']})"


# user-level checks every task gets (issue 13: level within +-2 dB median over clips, <= 0.1 % samples at full scale)
LEVEL = ["level_db_diff", "level_db_abs", "clip_fraction"]
WITH_MEDIAN = ("level_db_diff", "level_db_abs")


PRIMARY = {
    "v2s": ["fd", "kl", "onset_f1", "onset_f1_chance", "onset_f1_over_chance", "onset_precision", "onset_recall",
            "av_offset_abs_s", "class_acc"],
    "tts": ["wer", "cer", "spk_sim", "mcd", "lipsync_corr", "lipsync_conf", "lipsync_offset_abs_s",
            "speech_span_err_s", "duration_err_s", "fd"],
    "joint": ["wer", "cer", "spk_sim", "mcd", "lipsync_corr", "lipsync_offset_abs_s", "onset_f1", "onset_f1_chance",
              "onset_f1_over_chance", "av_offset_abs_s", "class_acc", "kl", "fd"],
}  # fmt: skip
PRIMARY = {task: names + LEVEL for task, names in PRIMARY.items()}


def write_report(report: dict, out: Path) -> None:
    """report.json and report.md, atomically."""
    write_text_atomic(out / "report.json", json.dumps(report, indent=1, default=_json_default))
    write_text_atomic(out / "report.md", render_markdown(report))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def render_markdown(report: dict) -> str:
    from vssflow.metrics.suite import better

    w = report["measured_with"]
    lines = [
        "# vssflow evaluation report",
        "",
        f"Model: `{report['model']['dir']}` (step {report['model']['step']}); data: `{report['config']['data']}`; "
        f"{report['config']['steps']} solver steps, cfg {report['config']['cfg']}, seed {report['config']['seed']}; "
        f"phonemes over the speech span of: {report['config'].get('speech_span', 'data')}.",
        "",
        "## Measured with",
        "",
        f"- ASR (WER/CER): **{w['asr']}**",
        f"- Audio embedding (FD): **{w['fd_embedding']}** (not FAD-VGGish; not comparable to published FAD values)",
        f"- KL: {w['kl_posteriors']}",
        f"- Speaker similarity: {w['speaker']}",
        f"- Lip sync: {w['lipsync']}",
        f"- Sound classes: {w['classifier']}",
        f"- Ground-truth audio: {w['ground_truth_audio']}",
        f"- Ground truth through codec + vocoder: {w.get('gt_vocoded', '–')}",
        "",
        "## Results (mean ± 95 % interval over clips)",
        "",
        "Each metric for the generated audio, for the ground truth through the model's own codec and vocoder (the "
        "best this model can sound) and for the raw ground truth (– where a comparison with itself is 0 by "
        "construction). `level_db_diff`: active-region RMS of the audio minus that of the ground truth (dB; goal "
        "within ±2 dB median); `clip_fraction`: share of samples at full scale (goal ≤ 0.001).",
    ]
    for task, m in report["metrics"].items():
        voc = (report.get("metrics_gt_vocoded") or {}).get(task, {})
        raw = (report.get("metrics_gt_raw") or {}).get(task, {})
        lines += ["", f"### {task}", "", "| metric | better | generated | GT through codec + vocoder | raw GT |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for k in PRIMARY[task]:
            if k in m:
                cells = [_fmt(d.get(k), with_median=k in WITH_MEDIAN) for d in (m, voc, raw)]
                lines.append(f"| {k} | {better(k)} | " + " | ".join(cells) + " |")
    lines += _speech_lines(report.get("speech") or {})
    val = report.get("validation")
    if val:
        lines += ["", "## Metric validation: ground truth vs deliberately broken audio", "",
                  f"Clips: {', '.join(val['clips'])}. A cell is **bold** when the metric is designed to catch that "
                  "breakage; ✓ = the ground truth scores better by the metric's margin.", ""]  # fmt: skip
        perts = ["silence", "shift200", "wrong_speaker", "wrong_words", "wrong_sound"]
        lines += ["| metric | ground truth | " + " | ".join(perts) + " |", "|---" * (2 + len(perts)) + "|"]
        for metric, row in val["table"].items():
            gt = next(iter(row.values()))["gt"]
            cells = []
            for p in perts:
                c = row.get(p)
                if c is None:
                    cells.append("–")
                    continue
                s = f"{c['broken']:.3f} {'✓' if c['separates'] else '✗'}"
                cells.append(f"**{s}**" if c["expected"] else s)
            lines.append(f"| {metric} | {gt:.3f} | " + " | ".join(cells) + " |")
        verdict = "every designed separation holds" if not val["failed"] else f"FAILED: {', '.join(val['failed'])}"
        lines += ["", f"Validation verdict: {verdict}."]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]]
    mf = report.get("mlflow") or {}
    lines += ["", f"MLflow: `{mf.get('tracking_uri')}` run `{mf.get('run_id')}`. Time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _speech_lines(speech: dict) -> list[str]:
    """Seen vs unseen sentences and voices (report.md)."""
    if not speech:
        return []
    lines = ["", "## Speech: seen vs unseen", "",
             "A test sentence is *seen* when its normalised transcript is also a training transcript of the same data; "
             "of *known words* when every word of it is in some training transcript (a sentence with a *new word* asks "
             "the model to say a word it never heard). "
             "WER of the generated audio / the ground truth through codec + vocoder / the raw ground truth.", "",
             "| task | test sentences | seen in training | group | n | WER generated | WER GT vocoded | WER raw GT |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, e in speech.items():
        head = f"| {task} | {e['sentences']} | {e['seen_in_train']} ({e['fraction_seen']:.0%}) |"
        groups = [(f"{p} sentences", g) for p, g in e.get("by_sentence", {}).items()]
        groups += [(f"{p} words", g) for p, g in e.get("by_words", {}).items()]
        groups += [(f"{p} voices", g) for p, g in e.get("by_voice", {}).items()]
        for name, g in groups:
            wer = [g[v]["wer"] for v in ("generated", "gt_vocoded", "gt_raw")]
            lines.append(f"{head} {name} | {wer[0]['n']} | " + " | ".join(_fmt(x) for x in wer) + " |")
            head = "| | | |"
    if not any(e["train_sentences"] for e in speech.values()):
        lines += ["", "No training transcripts found in the data: every sentence counts as unseen."]
    if not any("by_voice" in e for e in speech.values()):
        lines += ["", "The manifest does not mark held-out voices (`extra.held_out_voice`): no per-voice split."]
    return lines


def write_plots(report: dict, out: Path, cfg: EvalConfig) -> list[str]:
    """Spectrograms (ground truth vs generated) of a few clips and the training run's curves; relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vssflow.audio.io import read_audio
    from vssflow.audio.mel import log_mel

    plots = []
    (out / "plots").mkdir(exist_ok=True)
    shown = {}
    for c in report["clips"]:
        if shown.get(c["task"], 0) >= max(1, cfg.spectrograms // len(cfg.tasks)) and sum(shown.values()) > 0:
            continue
        shown[c["task"]] = shown.get(c["task"], 0) + 1
        panels = [("ground truth", "gt"), ("ground truth through codec + vocoder", "gt_vocoded"), ("generated", "")]
        panels = [(t, read_audio(out / "audio" / f"{c['clip_id']}{'.' + s if s else ''}.wav")) for t, s in panels]
        fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.2 * len(panels)), squeeze=False)
        for ax, (title, w) in zip(axes[:, 0], panels, strict=True):
            ax.imshow(np.asarray(log_mel(w)).T, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{c['clip_id']} ({c['task']}): {title}", fontsize=9)
            ax.set_ylabel("mel bin")
        axes[-1, 0].set_xlabel("frame (10 ms)")
        fig.tight_layout()
        name = f"plots/spec_{c['clip_id']}.png"
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        plots.append(name)
        if sum(shown.values()) >= cfg.spectrograms:
            break
    curves = _training_curves(report, cfg)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for k, pts in sorted(curves.items()):
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "plots/training_curves.png", dpi=80)
        plt.close(fig)
        plots.append("plots/training_curves.png")
    return plots


def _training_curves(report: dict, cfg: EvalConfig) -> dict[str, list[tuple[int, float]]]:
    run_id = cfg.train_run_id or (report["model"].get("info") or {}).get("mlflow_run_id")
    if not run_id or not cfg.mlflow_uri:
        return {}
    try:
        from pipelines.mlflow_utils import run_metrics

        m = run_metrics(run_id, tracking_uri=cfg.mlflow_uri)
    except Exception:  # the training store is elsewhere: curves are optional
        return {}
    return {k: v for k, v in m.items() if k.startswith("loss")}


def log_to_mlflow(report: dict, out: Path, cfg: EvalConfig, tracking_uri: str) -> str:
    """One run: params (config, model, measured-with), metrics ``<task>/<metric>``, report.

    When the store holds the training run of the model (``--train-run-id``, else the model's own), the evaluation is
    a child run of it, in its experiment (unless ``cfg.experiment`` names one): the UI shows the training with its
    evaluations under it. Otherwise it goes to ``cfg.experiment`` or ``vssflow-eval``."""
    from pipelines import mlflow_utils

    params = {"eval": {k: v for k, v in report["config"].items() if k != "tags"}, "measured_with":
              report["measured_with"], "model_step": report["model"]["step"]}  # fmt: skip
    tags = {"kind": "evaluation", **{k: str(v) for k, v in cfg.tags.items()}}
    train_run = cfg.train_run_id or (report["model"].get("info") or {}).get("mlflow_run_id")
    train_experiment = mlflow_utils.run_experiment(train_run, tracking_uri=tracking_uri) if train_run else None
    if train_experiment is not None:
        tags |= {"mlflow.parentRunId": train_run, "vssflow.train_run_id": train_run}
    run_id = mlflow_utils.create_run(
        tracking_uri, experiment=cfg.experiment or train_experiment or EVAL_EXPERIMENT,
        run_name=cfg.run_name or f"eval-{Path(cfg.model).name}", params=params, tags=tags,
    )  # fmt: skip
    with mlflow_utils.failed_on_error(run_id, tracking_uri=tracking_uri):  # not left RUNNING when logging fails
        _log_report(run_id, report, out, tracking_uri)
    mlflow_utils.finish_run(run_id, tracking_uri=tracking_uri)
    return run_id


def _log_report(run_id: str, report: dict, out: Path, tracking_uri: str) -> None:
    from pipelines import mlflow_utils

    flat = {f"{t}/{k}": v["mean"] for t, m in report["metrics"].items() for k, v in m.items()}
    flat |= {f"{t}/gt_vocoded/{k}": v["mean"] for t, m in report.get("metrics_gt_vocoded", {}).items()
             for k, v in m.items()}  # fmt: skip
    flat |= {f"{t}/{k}_median": m[k]["median"] for t, m in report["metrics"].items() for k in WITH_MEDIAN if k in m}
    if report.get("validation"):
        flat["validation/failed"] = float(len(report["validation"]["failed"]))
    mlflow_utils.log_run_metrics(run_id, flat, tracking_uri=tracking_uri, step=int(report["model"]["step"] or 0))
    mlflow_utils.log_run_artifacts(run_id, out / "plots", tracking_uri=tracking_uri, artifact_path="plots")
    write_report(report, out)
    for name in ("report.json", "report.md"):
        mlflow_utils.log_run_file(run_id, out / name, tracking_uri=tracking_uri, artifact_path="report")
