"""Scores the bundled model on every task on held-out generated data (the README's table).

    python scripts/evaluate_bundled_model.py [--model unipercept-tiny] [--tasks det mot ...]
        [--seed 0] [--part val|train]

Generates the world (seed 0, preset "train", as scripts/build_bundled_model.py trains on) under
``build/eval/data`` when missing, then runs one ``python -m unipercept.evaluate`` command per
task on its held-out part: the "val" split of COCO, RefCOCO, DAVIS, MOT/MOTS, YouTube-VIS and
Ref-YouTube-VOS, and LaSOT's testing set. Every video row also shows the copy-first-frame
baseline (``--model copy-first``): what doing nothing after the first frame scores, the first
frame's ground truth answered in every frame (sot, vos: the annotated box or masks; mot, mots:
the first frame's objects with their ids; vis: each first-frame object's mask and category,
score 1; rvos: the referred target's first-frame mask), which a model must beat to be following
anything. Image tasks have no first frame: "- (no first frame)". Each command is printed before
it runs; the scores go to ``build/eval/scores/<task>.json`` (the baseline's to
``<task>.copy-first.json``) and the table to stdout (and ``--markdown``).

``--seed N`` scores a world of another seed instead (under ``build/eval-seed<N>``), none of
which the model has seen, so that ``--part train`` may score its training splits too: 16 MOT
sequences against the held-out 4, for example, enough to tell whether a difference between two
models on the held-out splits is more than noise. Each part keeps its own results and scores
(``results-train`` and ``scores-train`` for the training splits).

For sot and vos a second table shows how well the answer's score separates hits (IoU >= 0.5
with a visible target) from misses on the held-out frames, read from the scores json's
``score_separation``: the task's score threshold, precision and recall there, the average
precision of the score as a hit detector (beside that of a score that is the same for every
answer), the threshold with the best F1, the fraction of frames whose target is absent, and
the headline metric at the threshold beside the one reporting every answer.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The tasks whose rows also show the copy-first-frame baseline (``evaluate --model copy-first``):
# every video task.
BASELINE_TASKS = ("sot", "vos", "mot", "mots", "vis", "rvos")


def commands(world: str, out: str, model: str, part: str = "val") -> dict[str, list[str]]:
    """Per task, the evaluate command's arguments (paths as given, relative to the repo), on the
    world's ``part``: "val" (the held-out splits) or "train" (the training splits, for a world
    of another seed than the model's)."""
    coco = f"{world}/coco"
    davis = f"{world}/davis"
    lasot = "training_set" if part == "train" else "testing_set"
    youtube = "train" if part == "train" else "valid"
    mot = f"MOTSynth-{part}"
    return {
        "det": ["det", "--gt", f"{coco}/annotations/instances_{part}.json", "--images",
                f"{coco}/{part}", "--results", f"{out}/det.json"],
        "insseg": ["insseg", "--gt", f"{coco}/annotations/instances_{part}.json", "--images",
                   f"{coco}/{part}", "--results", f"{out}/insseg.json"],
        "rec": ["rec", "--data", "synthetic_refcoco", "--data-override", f"reader.split={part}"],
        "res": ["res", "--data", "synthetic_refcoco", "--data-override", f"reader.split={part}"],
        "sot": ["sot", "--gt", f"{world}/lasot", "--images", f"{world}/lasot", "--sequences",
                f"{world}/lasot/{lasot}.txt", "--results", f"{out}/sot"],
        "vos": ["vos", "--gt", f"{davis}/Annotations/480p", "--images", f"{davis}/JPEGImages/480p",
                "--sequences", f"{davis}/ImageSets/2017/{part}.txt", "--results", f"{out}/vos"],
        "mot": ["mot", "--gt", f"{world}/mot/{mot}", "--images", f"{world}/mot/{mot}",
                "--categories", "circle", "--results", f"{out}/mot"],
        "mots": ["mots", "--gt", f"{world}/mots/{mot}", "--images",
                 f"{world}/mot/{mot}", "--categories", "circle", "--results", f"{out}/mots"],
        "vis": ["vis", "--gt", f"{world}/ytvis/{youtube}.json", "--images",
                f"{world}/ytvis/{youtube}/JPEGImages", "--results", f"{out}/vis.json"],
        "rvos": ["rvos", "--data", "synthetic_refytvos", "--data-override",
                 f"reader.split={youtube}"],
    }  # fmt: skip


# Per task: (metric label, how to read it from the scores json).
HEADLINES = {
    "det": ("box AP / AP50", lambda s: (s["bbox"]["ap"], s["bbox"]["ap50"])),
    "insseg": ("mask AP / AP50", lambda s: (s["segm"]["ap"], s["segm"]["ap50"])),
    "rec": ("P@0.5", lambda s: (s["precision"],)),
    "res": ("oIoU / mIoU", lambda s: (s["overall_iou"], s["mean_iou"])),
    "sot": ("AUC / P@20px", lambda s: (s["success_auc"], s["precision_20"])),
    "vos": ("J&F", lambda s: (s["J&F"],)),
    "mot": ("HOTA / MOTA / IDF1", lambda s: (s["hota"], s["mota"], s["idf1"])),
    "mots": ("sMOTSA / HOTA", lambda s: (s["smota"], s["hota"])),
    "vis": ("AP / AP50", lambda s: (s["ap"], s["ap50"])),
    "rvos": ("J&F", lambda s: (s["J&F"],)),
}


def _number(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"  # None or NaN: "-"


def separation_row(task: str, model: str, scores: dict) -> str:
    """One row of the score-separation table, from a sot or vos scores json."""
    s = scores["score_separation"]
    metric = HEADLINES[task][0].split(" / ")[0]
    at = s["metric_at_threshold"] or {}
    always = s["metric_always_answer"] or {}
    name = next(iter(at), None)
    cells = [
        task,
        model,
        f"{s['threshold']:.2f}",
        _number(s["precision"]),
        _number(s["recall"]),
        _number(s["f1"]),
        f"{_number(s['average_precision'])} ({_number(s['constant_score_average_precision'])})",
        f"{_number(s['best_f1'])} @ {_number(s['best_f1_threshold'])}",
        _number(s["absent_fraction"]),
        f"{metric} {_number(at.get(name))} / {_number(always.get(name))}",
    ]
    return "| " + " | ".join(cells) + " |"


SEPARATION_HEADER = [
    "| task | model | score threshold | precision | recall | F1 | AP (constant score) "
    "| best F1 @ threshold | target absent | metric at threshold / always answering |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unipercept-tiny")
    parser.add_argument("--tasks", nargs="+", default=list(HEADLINES), choices=list(HEADLINES))
    parser.add_argument(
        "--work", help="world and results, repo-relative (default build/eval, build/eval-seed<N>)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the world's seed (0: the one the model trained on)"
    )
    parser.add_argument(
        "--part",
        choices=("val", "train"),
        default="val",
        help="the world's held-out splits, or (with a seed other than 0) its training splits",
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument("--threads", type=int, help="CPU threads of each evaluate command")
    args = parser.parse_args(argv)
    if args.part == "train" and args.seed == 0:
        parser.error("--part train needs --seed other than 0: seed 0's training splits are what "
                     "the bundled model was trained on")  # fmt: skip
    if args.work is None:
        args.work = "build/eval" if args.seed == 0 else f"build/eval-seed{args.seed}"

    work = Path(args.work) if Path(args.work).is_absolute() else REPO / args.work
    world = work / "data" / "synthetic"
    if not (world / "summary.json").is_file():
        from unipercept.data.synthetic import generate

        generate(world, seed=args.seed, size="train", overwrite=True, progress=True)
    seed = json.loads((world / "summary.json").read_text()).get("seed")
    if seed != args.seed:
        parser.error(f"{world} was generated with seed {seed}, not {args.seed}; pass --work")
    env = {**os.environ, "UNIPERCEPT_DATA": str(work / "data")}
    relative = os.path.relpath(world, REPO)
    suffix = "" if args.part == "val" else f"-{args.part}"  # each part's results apart
    out = os.path.relpath(work / f"results{suffix}", REPO)
    scores_dir = work / f"scores{suffix}"
    scores_dir.mkdir(parents=True, exist_ok=True)
    data = os.path.relpath(work / "data", REPO)

    def run(task: str, model: str, results: str, scores_path: Path) -> dict:
        """Runs one evaluate command (printed first); its scores json."""
        arguments = [*commands(relative, results, model, args.part)[task], "--model", model]
        arguments += ["--json", os.path.relpath(scores_path, REPO)]
        if args.threads is not None:
            arguments += ["--threads", str(args.threads)]
        command = [sys.executable, "-m", "unipercept.evaluate", *arguments]
        shown = f"UNIPERCEPT_DATA={data} python -m unipercept.evaluate {shlex.join(arguments)}"
        sys.stdout.write(f"$ {shown}\n")
        sys.stdout.flush()
        subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(scores_path.read_text())

    def headline(task: str, scores: dict) -> str:
        return " / ".join(f"{v:.3f}" for v in HEADLINES[task][1](scores))

    rows, separation = [], []
    for task in args.tasks:
        scores = run(task, args.model, out, scores_dir / f"{task}.json")
        # What doing nothing after the first frame scores: its ground truth in every frame.
        baseline = "- (no first frame)"
        if task in BASELINE_TASKS:
            copied = run(
                task, "copy-first", f"{out}/copy-first", scores_dir / f"{task}.copy-first.json"
            )
            baseline = headline(task, copied)
            if "score_separation" in scores:  # sot and vos
                separation.append(separation_row(task, args.model, scores))
                separation.append(separation_row(task, "copy-first", copied))
        options = "".join(
            f" --{name} {value}"
            for name, value, default in (("seed", args.seed, 0), ("part", args.part, "val"))
            if value != default
        )
        again = f"`python scripts/evaluate_bundled_model.py --tasks {task}{options}`"
        rows.append(
            f"| {task} | {HEADLINES[task][0]} | {headline(task, scores)} | {baseline} | {again} |"
        )
    header = [
        "| task | metric | score | copy-first-frame baseline | reproduce |",
        "|---|---|---|---|---|",
    ]
    table = "\n".join([*header, *rows]) + "\n"
    if separation:
        table += "\n" + "\n".join([*SEPARATION_HEADER, *separation]) + "\n"
    sys.stdout.write(table)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
