"""Caption quality: attribute accuracy of the toy captioner, agreement of its two backends, and the recaption job.

The frames are held out: rendered with :func:`toyworld.captioner.render_frames` from seed 777, stream 11 (default),
while the toy zoo's captioner trains on seed 0, stream 10 and validates on seed 0, stream 11; one frame per
moving-shape clip and per dancer (default 200 + 200). A caption is scored attribute by attribute against the
ground truth with :func:`toyworld.captioner.attribute_hits` (colours in order, subject, background, and "dancing"
for dancers; a missing or extra word counts as wrong).

(a) Attribute accuracy of the transformers backend with the profile's generation settings (toy: beam 3, at least
    5 new tokens): overall, on clip frames and on dancer frames. Target ≥ 0.9 for each.
(b) Backend agreement: the fraction of frames on which the transformers and LAVIS backends return the identical
    caption with greedy decoding (``captioner.generation.num_beams=1``, the rest as the profile). Target ≥ 0.95.
    The same with the profile's beam 3 is printed as information only: beam search's length penalty is applied
    differently by transformers 4.26 (LAVIS's pin) and 5.x, so beams may legitimately end differently. The LAVIS
    backend's own attribute accuracy is printed too.
(c) End to end: a fresh toy world (seed 778, 20 dancers, no images or videos) recaptioned by
    :func:`pipelines.recaption.run` with the profile (its backend, frames, CLIP-best aggregation); each chosen
    caption is scored against the dancer's ``labels.parquet`` row (shirt, pants, background) with
    :func:`toyworld.captioner.truth_for_dancer`. A dancer without a captioned clip counts as all attributes wrong.
    Target ≥ 0.9. The accuracy of every candidate (one per frame at ``recaption.frames_at``) is printed as
    information.
    ``--set captioner.backend=lavis`` runs this part with the LAVIS backend ((a) and (b) name their backends
    themselves; other ``--set`` overrides apply to all three parts).

Everything is written to a temporary directory that is removed at the end.

    python bench/caption_quality.py [--seed 777] [--clips 200] [--dancers 200] [--out bench/results/captions.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import bench.common as common

ACCURACY_TARGET = 0.9
AGREEMENT_TARGET = 0.95


class _Replay:
    """A captioner stand-in that returns captions already generated (to score them with ``evaluate``)."""

    def __init__(self, captions: list[str]) -> None:
        self.captions = captions

    def generate(self, images) -> list[str]:
        if len(images) != len(self.captions):
            raise ValueError(f"{len(images)} frames, {len(self.captions)} captions")
        return list(self.captions)


def caption_frames(captioner_cfg, frames) -> tuple[list[str], float, float]:
    """Captions of ``frames`` by a freshly built captioner; (captions, load seconds, generate seconds)."""
    from models.captioner import build_captioner

    t = time.monotonic()
    captioner = build_captioner(captioner_cfg)
    load_s = time.monotonic() - t
    try:
        t = time.monotonic()
        captions = captioner.generate(list(frames))
        return captions, load_s, time.monotonic() - t
    finally:
        captioner.close()


def agreement(a: list[str], b: list[str]) -> tuple[float, list[int]]:
    """Fraction of identical captions and the indices where they differ."""
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return 1.0 - len(differ) / max(1, len(a)), differ


def end_to_end(cfg, tmp: Path, *, seed: int, dancers: int) -> dict:
    """Recaption a fresh dancer world with the job and score the chosen captions (and every candidate)."""
    import pyarrow.parquet as pq
    import ray

    from pipelines.runtime import run_job
    from toyworld.captioner import attribute_hits, truth_for_dancer

    t = time.monotonic()
    src = common.toy_dancer_world(tmp / "e2e", seed=seed, dancers=dancers)
    gen_s = time.monotonic() - t
    t = time.monotonic()
    try:
        result = run_job("recaption", cfg, src, tmp / "e2e" / "recaptioned")
    finally:
        ray.shutdown()
    run_s = time.monotonic() - t
    labels = pq.read_table(src / "labels.parquet").to_pylist()
    captioned = pq.read_table(result.output / "captioned", columns=["key", "caption", "caption_candidates"])
    by_key = {r["key"]: r for r in captioned.to_pylist()}
    correct = total = exact = cand_correct = cand_total = 0
    missing, wrong = [], []
    for label in labels:
        truth = truth_for_dancer(label["shirt"], label["pants"], label["background"])
        row = by_key.get(label["seq"])
        if row is None:
            missing.append(label["seq"])
            total += len(truth["colours"]) + 3
            continue
        c, n = attribute_hits(row["caption"], truth)
        correct, total, exact = correct + c, total + n, exact + int(c == n)
        if c != n:
            wrong.append((label["seq"], row["caption"], f"{label['shirt']}/{label['pants']}/{label['background']}"))
        for cand in row["caption_candidates"]:
            c, n = attribute_hits(cand, truth)
            cand_correct, cand_total = cand_correct + c, cand_total + n
    return {
        "seed": seed,
        "dancers": len(labels),
        "captioned": len(by_key),
        "missing": missing,
        "attribute_accuracy": correct / max(1, total),
        "all_attributes_correct": exact / max(1, len(labels)),
        "candidate_attribute_accuracy": cand_correct / max(1, cand_total),
        "wrong": wrong,
        "counts": result.manifest["counts"],
        "backend": result.manifest["captioner"]["backend"],
        "generate_s": round(gen_s, 1),
        "run_s": round(run_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=777, help="render seed of the held-out frames (zoo: 0)")
    parser.add_argument("--stream", type=int, default=11, help="render stream of the held-out frames")
    parser.add_argument("--clips", type=int, default=200, help="moving-shape clip frames")
    parser.add_argument("--dancers", type=int, default=200, help="dancer frames")
    parser.add_argument("--world-seed", type=int, default=778, help="seed of the end-to-end toy world")
    parser.add_argument("--world-dancers", type=int, default=20, help="dancers in the end-to-end toy world")
    parser.add_argument("--examples", type=int, default=5, help="disagreements / errors to print")
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", type=Path, default=None, help="write the full result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from pipelines.config import load_config, to_dict
    from toyworld.captioner import evaluate, render_frames

    cfg = load_config(args.profile, args.overrides)
    size = cfg.toyworld.image_size
    t = time.monotonic()
    frames, _, truths = render_frames(args.seed, args.stream, args.clips, args.dancers, 1, size)
    render_s = time.monotonic() - t
    beams = cfg.captioner.generation.num_beams
    settings = {"beam": [], "greedy": ["captioner.generation.num_beams=1"]}
    captions: dict[tuple[str, str], list[str]] = {}
    timing: dict[tuple[str, str], tuple[float, float]] = {}
    errors: dict[str, str] = {}
    for backend in ("transformers", "lavis"):
        for name, extra in settings.items():
            if backend in errors:
                continue
            ccfg = load_config(args.profile, [*args.overrides, f"captioner.backend={backend}", *extra]).captioner
            try:
                caps, load_s, gen_s = caption_frames(ccfg, frames)
            except Exception as exc:  # noqa: BLE001 - a missing LAVIS environment is reported, not fatal
                if backend == "transformers":
                    raise
                errors[backend] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                continue
            captions[backend, name], timing[backend, name] = caps, (load_s, gen_s)
    scores = {key: evaluate(_Replay(caps), frames, truths) for key, caps in captions.items()}

    res: dict = {
        "seed": args.seed,
        "stream": args.stream,
        "frames": len(frames),
        "profile": args.profile,
        "generation": to_dict(cfg.captioner.generation),
        "accuracy": {f"{b}/{n}": {k: v for k, v in s.items() if k != "examples"} for (b, n), s in scores.items()},
        "timings": {f"{b}/{n}": dict(zip(("load_s", "generate_s"), t, strict=True)) for (b, n), t in timing.items()},
        "errors": errors,
    }
    print(
        f"caption quality on held-out toy frames: seed {args.seed}, stream {args.stream}, {args.clips} clip + "
        f"{args.dancers} dancer frames (zoo: seed 0), profile {args.profile} (render {render_s:.1f} s)"
    )
    print(f"{'backend / decoding':<34}{'overall':>9}{'clips':>8}{'dancers':>9}{'all-correct':>13}{'frames/s':>10}")
    for (backend, name), s in scores.items():
        label = f"{backend} / {'beam ' + str(beams) if name == 'beam' else 'greedy'}"
        fps = len(frames) / max(timing[backend, name][1], 1e-9)
        print(
            f"{label:<34}{s['attribute_accuracy']:>9.3f}{s['clip_attribute_accuracy']:>8.3f}"
            f"{s['dancer_attribute_accuracy']:>9.3f}{s['all_attributes_correct']:>13.3f}{fps:>10.1f}"
        )
    for backend, err in errors.items():
        print(f"{backend}: unavailable ({err})")

    lines = []
    tf = scores["transformers", "beam"]
    for key, label in (
        ("attribute_accuracy", "overall"),
        ("clip_attribute_accuracy", "clips"),
        ("dancer_attribute_accuracy", "dancers"),
    ):
        ok = tf[key] >= ACCURACY_TARGET
        lines.append(
            f"{'PASS' if ok else 'FAIL'} (a) transformers beam {beams} attribute accuracy, {label}: "
            f"{tf[key]:.3f} ≥ {ACCURACY_TARGET}"
        )

    res["agreement"] = {}
    if "lavis" in errors:
        lines.append(f"FAIL (b) backend agreement, greedy: LAVIS backend unavailable ({errors['lavis']})")
    else:
        for name in ("greedy", "beam"):
            rate, differ = agreement(captions["transformers", name], captions["lavis", name])
            res["agreement"][name] = {"rate": rate, "differ": len(differ)}
            decoding = "greedy" if name == "greedy" else f"beam {beams}"
            print(f"backend agreement, {decoding}: {rate:.3f} ({len(differ)} of {len(frames)} captions differ)")
            for i in differ[: args.examples]:
                print(f"    frame {i}: transformers {captions['transformers', name][i]!r}")
                print(f"    frame {i}: lavis        {captions['lavis', name][i]!r}")
            if name == "greedy":
                ok = rate >= AGREEMENT_TARGET
                lines.append(
                    f"{'PASS' if ok else 'FAIL'} (b) backend agreement, greedy: {rate:.3f} ≥ {AGREEMENT_TARGET}"
                )
            else:
                lines.append(f"INFO (b) backend agreement, beam {beams}: {rate:.3f} (no target)")

    with tempfile.TemporaryDirectory() as tmp:
        e2e = end_to_end(cfg, Path(tmp), seed=args.world_seed, dancers=args.world_dancers)
    res["end_to_end"] = e2e
    counts = e2e["counts"]
    print(
        f"end to end: toy world seed {e2e['seed']}, {e2e['dancers']} dancers, recaption job ({e2e['backend']}, "
        f"{cfg.recaption.aggregation} of {len(cfg.recaption.frames_at)} frames): {counts['by_decision']}, "
        f"{counts['distinct_captions']} distinct captions (generate {e2e['generate_s']} s, job {e2e['run_s']} s "
        "including Ray start-up)"
    )
    print(
        f"    chosen captions: attribute accuracy {e2e['attribute_accuracy']:.3f}, all attributes correct "
        f"{e2e['all_attributes_correct']:.3f}; every candidate: {e2e['candidate_attribute_accuracy']:.3f}; "
        f"dancers without a caption: {len(e2e['missing'])}"
    )
    for seq, caption, truth in e2e["wrong"][: args.examples]:
        print(f"    {seq}: {caption!r} (truth shirt/pants/background {truth})")
    ok = e2e["attribute_accuracy"] >= ACCURACY_TARGET
    lines.append(
        f"{'PASS' if ok else 'FAIL'} (c) end-to-end attribute accuracy of chosen captions: "
        f"{e2e['attribute_accuracy']:.3f} ≥ {ACCURACY_TARGET}"
    )
    for line in lines:
        print(line)
    common.write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
