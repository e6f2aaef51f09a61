"""How much intelligibility the Griffin-Lim output path keeps, per mel -> magnitude inversion (issue 13).

Ground-truth speech (espeak-ng sentences in the corpus voices, plus recorded asterisk prompts when installed) goes
through the paper's log-mel and back to a waveform by each path; the same phase reconstruction (phase-gradient
start + 16 fast Griffin-Lim iterations) follows every inversion:
    raw       the audio itself (the ASR's own floor)
    pinv      exp(mel) @ pinv(filterbank), clamped at 0 (the default before issue 13)
    nnls      non-negative fit by multiplicative updates (KL / Richardson-Lucy, the default since issue 13)
    nnls-ls   the same updates for least squares (beta 2)            } with --all
    nnls-is   the same updates for Itakura-Saito (beta 0)            }
    true      the true STFT magnitude (the ceiling of any mel inversion with this phase reconstruction)
Printed per path: Whisper-base WER and CER over all words (edits / reference words), spectral convergence of the
magnitude and of the output waveform against the true magnitude, |log-mel error| of the magnitude against the
input mel, and ms per 2 s clip of the whole vocoder (batch of 16, one thread; inversion alone in brackets).

Whisper (faster-whisper's defaults, as vssflow.metrics.asr uses it) falls back to sampling at temperature > 0 when
a beam-search transcript looks unreliable, which happens more often on vocoded speech. A process that makes the
same calls gets the same transcripts, but the sampler's state carries over from call to call (calling
``ctranslate2.set_random_seed(0)`` before each pass did not make two passes equal), so any change upstream (another
path, another clip) can change later transcripts too. ``--passes N`` transcribes each clip N times and prints the
mean and the range of the N pooled rates; a difference between paths smaller than that range is noise.

    python -m bench.bench_vocoder_quality                 # 12 espeak + 4 recorded utterances, ~1-2 min on 2 cores
    python -m bench.bench_vocoder_quality --espeak 64 --recorded 12 --passes 3     # the table in docs/performance.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

HOP = 160


def utterances(n_espeak: int, n_recorded: int) -> list[tuple[str, str, np.ndarray]]:
    """(kind, transcript, (N,) float32 16 kHz) for n_espeak espeak sentences and up to n_recorded prompts."""
    from vssflow.synth.assets import asterisk_prompts, load_audio
    from vssflow.synth.espeak import synthesize
    from vssflow.synth.sentences import REFERENCE_SENTENCES, SENTENCES, SPEAKERS

    texts = SENTENCES + REFERENCE_SENTENCES
    out = []
    for i in range(n_espeak):  # voice and sentence both cycle, so each (sentence, voice) pair is new
        text, voice = texts[i % len(texts)], SPEAKERS[(3 * i + i // len(texts)) % len(SPEAKERS)]
        out.append(("espeak", text, synthesize(text, voice).audio))
    prompts = [p for p in asterisk_prompts() if p.duration <= 6.0]
    for p in prompts[:: max(1, len(prompts) // max(1, n_recorded))][:n_recorded]:
        out.append(("recorded", p.transcript, load_audio(p.path)))
    return [(k, t, a[: len(a) // HOP * HOP].astype(np.float32)) for k, t, a in out]


def _edits(metric, ref: str, hyp: str) -> tuple[float, int]:
    """(edit count, reference length) from a per-utterance rate, so rates can be pooled over all words."""
    from vssflow.metrics.wer import normalize_for_wer

    ref_n = normalize_for_wer(ref)
    size = len(ref_n.split()) if metric.__name__ == "wer" else len(ref_n)
    return metric(ref, hyp) * size, size


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--espeak", type=int, default=12, help="espeak utterances")
    parser.add_argument("--recorded", type=int, default=4, help="recorded asterisk prompts (when installed)")
    parser.add_argument("--all", action="store_true", help="also the least-squares and Itakura-Saito fits")
    parser.add_argument("--no-asr", action="store_true", help="skip Whisper (spectral measures and timing only)")
    parser.add_argument("--passes", type=int, default=1, help="ASR passes per clip (Whisper may sample: see below)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from vssflow.audio.mel import log_mel, mel_filterbank
    from vssflow.audio.mel_inversion import MelInverter
    from vssflow.audio.phase import spectral_convergence
    from vssflow.audio.vocoder import GriffinLimConfig, GriffinLimVocoder
    from vssflow.metrics.wer import cer, wer

    vocoder = GriffinLimVocoder(GriffinLimConfig())
    c = vocoder.config
    fbank = mel_filterbank(c.mel)
    inverters = {
        "pinv": MelInverter(fbank, method="pinv"),
        "nnls": MelInverter(fbank, method="nnls", n_iter=c.inversion_iter),
    }
    if args.all:
        inverters["nnls-ls"] = MelInverter(fbank, method="nnls", n_iter=c.inversion_iter, beta=2.0)
        inverters["nnls-is"] = MelInverter(fbank, method="nnls", n_iter=c.inversion_iter, beta=0.0)
    paths = ["raw", *inverters, "true"]
    stft = dict(n_fft=c.mel.n_fft, hop_length=c.mel.hop_length, win_length=c.mel.win_length, window=vocoder.window)

    clips = utterances(args.espeak, args.recorded)
    kinds = sorted({k for k, _, _ in clips})
    asr = None
    if not args.no_asr:
        from vssflow.errors import AssetError
        from vssflow.metrics.asr import load_asr

        try:
            asr = load_asr("auto", threads=1)
        except AssetError as err:
            print(f"(no ASR, WER/CER skipped: {err})")
    counts = ", ".join(f"{sum(k == q for k, _, _ in clips)} {q}" for q in kinds)
    print(f"== {len(clips)} utterances ({counts}), ASR {getattr(asr, 'name', 'none')}, "
          f"phase: {c.init} + {c.n_iter} fast Griffin-Lim ==", flush=True)  # fmt: skip

    rows: dict[str, dict[str, list]] = {p: {"wer": [], "cer": [], "sc_mag": [], "sc_out": [], "mel_l1": []}
                                        for p in paths}  # fmt: skip
    for kind, text, audio in clips:
        wav = torch.from_numpy(audio)[None]  # (1, N)
        mel = torch.from_numpy(log_mel(audio))[None]  # (1, T, M)
        true = torch.stft(wav, **stft, return_complex=True).abs()  # (1, F, T + 1)
        for path in paths:
            row = rows[path]
            if path == "raw":
                out, magnitude = wav, None
            elif path == "true":
                magnitude = true
                out = vocoder.reconstruct(magnitude)
            else:
                x = inverters[path](torch.exp(mel))  # (1, T, F)
                magnitude = torch.cat([x, x[:, -1:]], dim=1).transpose(1, 2)  # (1, F, T + 1), as the vocoder
                out = vocoder.reconstruct(magnitude)
            if magnitude is not None:
                err = torch.linalg.vector_norm(magnitude - true) / torch.linalg.vector_norm(true)
                row["sc_mag"].append(float(err))
                row["sc_out"].append(float(spectral_convergence(out, true, **stft)[0]))
                remel = torch.log(torch.clamp(magnitude[..., :-1].transpose(1, 2) @ fbank, min=c.mel.log_floor))
                row["mel_l1"].append(float((remel - mel).abs().mean()))
            for i in range(args.passes if asr is not None else 0):
                hyp = asr.transcribe(out[0].numpy())
                row["wer"].append((*_edits(wer, text, hyp), kind, i))
                row["cer"].append((*_edits(cer, text, hyp), kind, i))

    # speed: the whole vocoder on a batch of 16 clips of 2 s, one thread, per inversion
    n = 2 * c.mel.sample_rate
    batch = np.stack([np.pad(a[:n], (0, max(0, n - len(a)))) for _, _, a in (clips * 16)[:16]])
    mels = torch.from_numpy(log_mel(batch))  # (16, 200, M)
    speed = {}
    for path, inv in inverters.items():
        voc = GriffinLimVocoder(GriffinLimConfig(inversion=inv.method, inversion_iter=inv.n_iter))
        voc.inverter = inv
        whole = _median_ms(lambda voc=voc: voc(mels)) / len(mels)
        alone = _median_ms(lambda inv=inv: inv(torch.exp(mels))) / len(mels)
        speed[path] = (whole, alone)

    def pooled(entries, kind=None, index=None) -> float:  # entries: (edits, reference length, kind, pass)
        entries = [e for e in entries if kind in (None, e[2]) and index in (None, e[3])]
        return sum(e[0] for e in entries) / max(1, sum(e[1] for e in entries))

    def shown(entries, kind=None) -> str:  # mean over the passes, and their range
        per_pass = [pooled(entries, kind, s) for s in range(args.passes)]
        spread = f" [{min(per_pass):.3f}-{max(per_pass):.3f}]" if args.passes > 1 else ""
        return f"{pooled(entries, kind):.3f}{spread}"

    header = "| path | WER | " + " | ".join(f"WER {k}" for k in kinds) + " | CER | SC magnitude | SC output | " \
             "mel L1 | ms / 2 s clip (inversion) |"  # fmt: skip
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    result = {}
    for path in paths:
        row = rows[path]
        cells = [path]
        if asr is not None:
            cells += [shown(row["wer"]), *(shown(row["wer"], k) for k in kinds), shown(row["cer"])]
        else:
            cells += ["–"] * (len(kinds) + 2)
        if row["sc_mag"]:
            cells += [f"{np.mean(row['sc_mag']):.3f}", f"{np.mean(row['sc_out']):.3f}", f"{np.mean(row['mel_l1']):.4f}"]
        else:
            cells += ["–", "–", "–"]
        cells.append(f"{speed[path][0]:.1f} ({speed[path][1]:.1f})" if path in speed else "–")
        print("| " + " | ".join(cells) + " |")
        result[path] = {
            "wer": pooled(row["wer"]) if asr else None,
            "cer": pooled(row["cer"]) if asr else None,
            "sc_magnitude": float(np.mean(row["sc_mag"])) if row["sc_mag"] else None,
            "sc_output": float(np.mean(row["sc_out"])) if row["sc_out"] else None,
            "ms_per_clip": speed.get(path, (None,))[0],
        }
    print(f"WER/CER pooled over all words (mean of {args.passes} ASR pass(es) [range]); "
          "SC = ||magnitude - true|| / ||true|| (mean over clips); "
          "mel L1 = mean |log-mel of the magnitude - input log-mel|; one torch thread")  # fmt: skip
    return result


def _median_ms(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


if __name__ == "__main__":
    main()
