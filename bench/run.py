"""`make bench`: every performance number the project claims, measured side by side in one run.

Each section is a module of bench/ (or a pipeline's bench function) with a ``main()``; a section whose module is
not part of this checkout is reported as missing rather than skipped silently.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

SECTIONS = [
    ("generation vs compute floor (issue 3)", "bench.bench_generate"),
    ("feature extraction vs raw decode (issue 4)", "bench.bench_extract"),
    ("Ray Data preprocessing (issue 5)", "bench.bench_preprocess"),
    ("Ray Train + DeepSpeed (issue 6)", "bench.bench_train"),
    ("Ray Serve batching and HTTP overhead (issue 7)", "bench.bench_serve"),
    ("vocoder intelligibility per mel inversion (issue 13)", "bench.bench_vocoder_quality"),
    ("dubbing a video from its subtitles vs its parts one by one (issue 18)", "bench.bench_dub"),
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = set(argv)
    failed = []
    for title, module in SECTIONS:
        if only and not any(o in module for o in only):
            continue
        print(f"\n##### {title} [{module}]", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                print(f"(missing: {module} is not in this checkout)")
                failed.append(module)
                continue
            raise
        try:
            mod.main([])
        except Exception:
            traceback.print_exc()
            failed.append(module)
        print(f"##### {title}: {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        print(f"\nbench sections that failed or are missing: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
