"""Turn the published layouts of public datasets into manifest rows (:mod:`vssflow.data.manifest`).

Each adapter reads only the dataset's own files (lists, transcripts, alignments), never decodes media, and returns
rows with absolute paths; :func:`~vssflow.data.manifest.write_manifest` makes them relative to the manifest.
Media that a list names but that is not on disk is skipped (and counted in ``AdapterResult.missing``).

* VGGSound: ``vggsound.csv`` (``youtube_id,start_seconds,label,split``, no header) + a directory of clips named
  ``<ytid>_<start>.mp4`` (start as written, zero-padded to 6 digits, or with ``_<end>``), or whole videos
  ``<ytid>.mp4`` (then ``start``/``end`` select the 10 s window).
* Chem (and any "speaker dirs of video + text" corpus): ``<root>/<speaker>/<clip>.{mp4,avi,mpg,webm,mkv}`` with a
  sibling ``<clip>.txt`` or ``.lab`` transcript; optional split lists ``<root>/{train,val,test}.txt`` of clip ids.
* GRID: ``s1 .. s34`` speaker dirs of ``.mpg`` videos (directly, or in ``video/``) and ``.align`` files (in
  ``<root>/align/``, ``<root>/<spk>/align/``, ``<root>/align/<spk>/`` or beside the video) with lines
  ``start end word`` in 1/25000 s; ``sil``/``sp`` are pauses.
* LRS2: ``main/<vid>/<utt>.mp4`` (and ``pretrain/...``) with ``<utt>.txt`` whose ``Text:`` line is the transcript
  (and, in pretrain, a ``WORD START END ASDSCORE`` table); lists ``pretrain.txt``, ``train.txt``, ``val.txt``,
  ``test.txt`` of ``<vid>/<utt>`` (test lines may carry extra flags).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vssflow.data.manifest import ManifestRow, TimedLabel
from vssflow.errors import ManifestError, MissingFileError

VIDEO_EXTS = (".mp4", ".avi", ".mpg", ".mpeg", ".webm", ".mkv", ".mov")
GRID_PAUSES = {"sil", "sp"}


@dataclass
class AdapterResult:
    """Rows made from a dataset, and what was listed but not found on disk."""

    rows: list[ManifestRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def hash_split(key: str, val: float = 0.05, test: float = 0.05) -> str:
    """A stable split from a key (md5), for datasets without official lists."""
    u = int(hashlib.md5(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return "test" if u < test else "val" if u < test + val else "train"


def _need_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{what} directory not found; point to the dataset root", source=str(root))
    return root


# ------------------------------------------------------------------------------------------------- VGGSound
def vggsound(csv_path: str | Path, video_dir: str | Path, *, clip_seconds: float = 10.0) -> AdapterResult:
    """VGGSound's CSV + video directory -> v2s rows (``extra.label`` is the class label)."""
    csv_path, video_dir = Path(csv_path), _need_dir(video_dir, "VGGSound video")
    if not csv_path.is_file():
        raise MissingFileError("VGGSound CSV not found", source=str(csv_path))
    files = {p.stem: p for p in video_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTS}
    out = AdapterResult()
    with csv_path.open(newline="", encoding="utf-8") as f:
        for n, rec in enumerate(csv.reader(f), start=1):
            if not rec or rec[0].strip().lower() in ("youtube_id", "# youtube_id"):
                continue
            if len(rec) < 4:
                raise ManifestError(f"line {n}: expected youtube_id,start_seconds,label,split", source=str(csv_path))
            ytid, start_s, label, split = (v.strip() for v in rec[:4])
            try:
                start = int(float(start_s))
            except ValueError:
                raise ManifestError(
                    f"line {n}: start_seconds {start_s!r} is not a number", source=str(csv_path)
                ) from None
            names = [f"{ytid}_{start:06d}", f"{ytid}_{start}", f"{ytid}_{start:06d}_{start + int(clip_seconds):06d}",
                     f"{ytid}_{start}_{start + int(clip_seconds)}"]  # fmt: skip
            path = next((files[k] for k in names if k in files), None)
            offset = 0.0
            if path is None and ytid in files:  # the whole YouTube video: select the window
                path, offset = files[ytid], float(start)
            if path is None:
                out.missing.append(f"{ytid}_{start}")
                continue
            out.rows.append(
                ManifestRow(
                    clip_id=f"vggsound-{ytid}_{start:06d}",
                    video=str(path.resolve()),
                    task="v2s",
                    start=offset,
                    end=offset + clip_seconds,
                    split="test" if split.lower().startswith("test") else "train",
                    licence="CC-BY-4.0 (annotations); video: YouTube uploader's licence",
                    source="VGGSound",
                    extra={"label": label},
                )
            )
    return out


# ------------------------------------------------------------------------------------------------- Chem
def _read_lists(root: Path, names: dict[str, str]) -> dict[str, str]:
    """clip key -> split, from whichever list files exist (first token of each line)."""
    split_of: dict[str, str] = {}
    for fname, split in names.items():
        p = root / fname
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    split_of[line.split()[0].strip()] = split
    return split_of


def speaker_dirs(root: str | Path, *, dataset: str = "chem", licence: str = "see the dataset's terms") -> AdapterResult:
    """Chem-style corpora: ``<root>/<speaker>/<clip>.<video>`` + ``<clip>.txt``/``.lab`` -> tts rows."""
    root = _need_dir(root, f"{dataset} root")
    lists = _read_lists(root, {"train.txt": "train", "val.txt": "val", "valid.txt": "val", "test.txt": "test"})
    out = AdapterResult()
    for spk in sorted(p for p in root.iterdir() if p.is_dir()):
        for video in sorted(p for p in spk.rglob("*") if p.suffix.lower() in VIDEO_EXTS):
            text_file = next((video.with_suffix(s) for s in (".txt", ".lab") if video.with_suffix(s).is_file()), None)
            key = f"{spk.name}/{video.stem}"
            if text_file is None:
                out.missing.append(f"{key} (transcript)")
                continue
            text = " ".join(text_file.read_text(encoding="utf-8", errors="replace").split())
            if not text:
                out.missing.append(f"{key} (empty transcript)")
                continue
            split = lists.get(key) or lists.get(video.stem) or hash_split(key)
            out.rows.append(
                ManifestRow(
                    clip_id=f"{dataset}-{spk.name}-{video.stem}",
                    video=str(video.resolve()),
                    task="tts",
                    transcript=text,
                    speaker_id=f"{dataset}-{spk.name}",
                    split=split,
                    licence=licence,
                    source=dataset,
                )
            )
    return out


def chem(root: str | Path) -> AdapterResult:
    """The Chem lecture corpus (one chemistry teacher) in speaker-dir layout."""
    return speaker_dirs(root, dataset="chem", licence="research use; see the Chem/Lip2Wav terms")


# ------------------------------------------------------------------------------------------------- GRID
def read_grid_align(path: Path) -> tuple[TimedLabel, ...]:
    """Words of a GRID ``.align`` file (times in 1/25000 s -> seconds), pauses dropped."""
    words = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ManifestError(f"line {n}: expected 'start end word'", source=str(path))
        s, e, w = parts
        if w.lower() in GRID_PAUSES:
            continue
        try:
            words.append(TimedLabel(w, int(s) / 25000.0, int(e) / 25000.0))
        except ValueError:
            raise ManifestError(f"line {n}: start/end must be integers", source=str(path)) from None
    return tuple(words)


def grid(root: str | Path) -> AdapterResult:
    """GRID (s1..s34): videos + ``.align`` word timings -> tts rows with word timings."""
    root = _need_dir(root, "GRID root")
    out = AdapterResult()
    spk_dirs = sorted((p for p in root.iterdir() if p.is_dir() and p.name[:1] == "s" and p.name[1:].isdigit()),
                      key=lambda p: int(p.name[1:]))  # fmt: skip
    for spk in spk_dirs:
        for video in sorted(p for p in spk.rglob("*") if p.suffix.lower() in VIDEO_EXTS):
            utt = video.stem
            candidates = [root / "align" / f"{utt}.align", spk / "align" / f"{utt}.align",
                          root / "align" / spk.name / f"{utt}.align", video.with_suffix(".align")]  # fmt: skip
            align = next((c for c in candidates if c.is_file()), None)
            if align is None:
                out.missing.append(f"{spk.name}/{utt} (align)")
                continue
            words = read_grid_align(align)
            if not words:
                out.missing.append(f"{spk.name}/{utt} (no words)")
                continue
            out.rows.append(
                ManifestRow(
                    clip_id=f"grid-{spk.name}-{utt}",
                    video=str(video.resolve()),
                    task="tts",
                    transcript=" ".join(w.label for w in words),
                    speaker_id=f"grid-{spk.name}",
                    split=hash_split(f"{spk.name}/{utt}"),
                    licence="CC-BY-4.0",
                    source="GRID",
                    words=words,
                )
            )
    return out


# ------------------------------------------------------------------------------------------------- LRS2
def read_lrs2_text(path: Path) -> tuple[str, tuple[TimedLabel, ...] | None]:
    """The ``Text:`` line of an LRS2 ``.txt`` and, if present, its ``WORD START END ASDSCORE`` word table."""
    text, words, in_table = None, [], False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("Text:"):
            text = " ".join(line[5:].split())
        elif line.split()[:3] == ["WORD", "START", "END"]:
            in_table = True
        elif in_table and len(line.split()) >= 3:
            w, s, e = line.split()[:3]
            words.append(TimedLabel(w, float(s), float(e)))
    if not text:
        raise ManifestError("no 'Text:' line", source=str(path))
    return text, (tuple(words) or None)


def lrs2(root: str | Path, *, sets: Iterable[str] = ("pretrain", "train", "val", "test")) -> AdapterResult:
    """LRS2: the list files pick the clips and splits (pretrain and train -> train); ``main/`` or ``pretrain/``."""
    root = _need_dir(root, "LRS2 root")
    out = AdapterResult()
    for name in sets:
        listing = root / f"{name}.txt"
        if not listing.is_file():
            continue
        media_dir = root / ("pretrain" if name == "pretrain" else "main")
        split = {"pretrain": "train", "train": "train", "val": "val", "test": "test"}[name]
        for line in listing.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            key = line.split()[0]
            video, text_file = media_dir / f"{key}.mp4", media_dir / f"{key}.txt"
            if not video.is_file() or not text_file.is_file():
                out.missing.append(f"{name}:{key}")
                continue
            text, words = read_lrs2_text(text_file)
            vid = key.split("/")[0]
            out.rows.append(
                ManifestRow(
                    clip_id=f"lrs2-{name}-{key.replace('/', '-')}",
                    video=str(video.resolve()),
                    task="tts",
                    transcript=text,
                    speaker_id=f"lrs2-{vid}",  # LRS2 has no speaker labels; one source video ~ one speaker
                    split=split,
                    licence="BBC LRS2 licence (research only)",
                    source=f"LRS2/{name}",
                    words=words,
                )
            )
    if not out.rows and not out.missing:
        raise MissingFileError(
            "no LRS2 list files (pretrain.txt, train.txt, val.txt, test.txt) found", source=str(root)
        )
    return out


ADAPTERS = {"vggsound": vggsound, "chem": chem, "grid": grid, "lrs2": lrs2}
