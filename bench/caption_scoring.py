"""Caption scoring time: pycocoevalcap's `COCOEvalCap` against `score_captions` and `python -m eval.caption score`,
on the same files, side by side in one run, with every score checked for equality.

    .venv/bin/python bench/caption_scoring.py                   # JSON to bench/results/caption_scoring.json
    .venv/bin/python bench/caption_scoring.py --images 500 --repeats 3

- Data: a synthetic COCO-format set written here (nothing is downloaded): `--images` images (default 5,000, the
  Karpathy test split's size) with `--refs` reference captions each (default 5) and one candidate caption. Each
  image gets a scene (subject, action, place, adjectives, an extra phrase); its captions describe the scene in
  different words (synonyms, plurals, six sentence patterns, ~11 words, mixed case and punctuation; ~440 distinct
  words in all, far fewer than real COCO captions have), and 20% of the candidates describe a partly different
  scene, so every metric has matches and misses to work through. The same `--seed` gives the same files.
- Sides: `cocoevalcap` is `COCO(gt)`, `coco.loadRes(results)`, `COCOEvalCap(...).evaluate()` as its README
  shows; `score_captions` is the project's function on the same two paths; `cli` is
  `python -m eval.caption score --results ... --annotations ... --out ...` in a fresh process (interpreter start,
  imports and the report files included). SPICE is left out of all three: `COCOEvalCap` always constructs it,
  and its constructor downloads Stanford CoreNLP, so the benchmark replaces it with a scorer that returns 0.
- Timing: wall clock of each call; the rounds are interleaved (the order rotates each round, so that no side
  always runs first), medians reported, and each round's ratio too. CPU seconds are this process's plus its
  finished children's (the Java processes). The JVMs' jars and METEOR's paraphrase table are read once before
  the first round, so that no side pays for a cold file cache. On a shared machine the timings are noisy.
- Equality: every corpus metric and every image's score of `score_captions` and of the CLI report must equal
  `COCOEvalCap`'s within 1e-6 (`--tolerance`); the script exits with status 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from eval.caption_metrics import METRICS, score_captions  # noqa: E402
from bench.timing import add_output_arguments, argument_parser, command_line, report  # noqa: E402
from eval.java import require_java  # noqa: E402
from eval.ptb_tokenizer import CORENLP_JAR  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "caption_scoring.json"
SIDES = ("score_captions", "cli", "cocoevalcap")  # round 0 runs ours first: it pays for any warm-up left
REFERENCE = "cocoevalcap"
Scores = tuple[dict[str, float], dict[int, dict[str, float]]]

# --- a synthetic COCO caption set ------------------------------------------------------------------------------

SUBJECTS = [  # synonym groups of (singular, plural)
    [("dog", "dogs"), ("puppy", "puppies")], [("man", "men"), ("guy", "guys")], [("woman", "women"), ("lady", "ladies")],
    [("child", "children"), ("kid", "kids")], [("boy", "boys")], [("girl", "girls")],
    [("cat", "cats"), ("kitten", "kittens")], [("horse", "horses"), ("pony", "ponies")], [("bus", "buses")],
    [("train", "trains")], [("car", "cars"), ("vehicle", "vehicles")], [("bird", "birds")], [("giraffe", "giraffes")],
    [("elephant", "elephants")], [("zebra", "zebras")], [("skier", "skiers")], [("surfer", "surfers")],
    [("skateboarder", "skateboarders")], [("player", "players"), ("athlete", "athletes")], [("cow", "cows")],
    [("sheep", "sheep")], [("motorcycle", "motorcycles"), ("motorbike", "motorbikes")],
    [("plane", "planes"), ("airplane", "airplanes"), ("jet", "jets")], [("bear", "bears")], [("person", "people")],
    [("truck", "trucks")], [("boat", "boats")], [("teddy bear", "teddy bears")], [("baby", "babies")],
    [("tennis player", "tennis players")], [("baseball player", "baseball players")], [("chef", "chefs"),
    ("cook", "cooks")], [("police officer", "police officers")], [("student", "students")], [("couple", "couples")],
    [("duck", "ducks")], [("goose", "geese")], [("seagull", "seagulls")], [("pigeon", "pigeons")],
    [("bicycle", "bicycles"), ("bike", "bikes")], [("van", "vans")], [("taxi", "taxis"), ("cab", "cabs")],
    [("tractor", "tractors")], [("kite", "kites")], [("clock tower", "clock towers")], [("umbrella", "umbrellas")],
    [("laptop", "laptops"), ("computer", "computers")], [("sandwich", "sandwiches")], [("pizza", "pizzas")],
    [("cake", "cakes")], [("donut", "donuts")], [("banana", "bananas")], [("vase", "vases")],
    [("fire hydrant", "fire hydrants")], [("stop sign", "stop signs")], [("bench", "benches")],
]
ACTIONS = [("runs", "running"), ("sits", "sitting"), ("stands", "standing"), ("walks", "walking"),
           ("rides", "riding"), ("plays", "playing"), ("looks", "looking"), ("eats", "eating"), ("rests", "resting"),
           ("waits", "waiting"), ("drives", "driving"), ("flies", "flying"), ("jumps", "jumping"), ("lies", "lying"),
           ("grazes", "grazing"), ("poses", "posing"), ("travels", "traveling"), ("moves", "moving"),
           ("crosses", "crossing"), ("sleeps", "sleeping"), ("swims", "swimming"), ("climbs", "climbing"),
           ("carries", "carrying"), ("holds", "holding"), ("throws", "throwing"), ("catches", "catching"),
           ("swings", "swinging"), ("leans", "leaning"), ("hangs", "hanging"), ("floats", "floating"),
           ("sails", "sailing"), ("skates", "skating"), ("surfs", "surfing"), ("hides", "hiding"),
           ("smiles", "smiling"), ("watches", "watching"), ("drinks", "drinking"), ("cooks", "cooking"),
           ("cuts", "cutting"), ("displays", "displaying")]
PLACES = [["street", "road"], ["field", "meadow", "pasture"], ["beach", "shore"], ["couch", "sofa"], ["table"],
          ["kitchen"], ["park"], ["snow", "slope", "hill"], ["water", "ocean", "lake"], ["sidewalk"],
          ["grass", "lawn"], ["building"], ["runway"], ["track", "tracks"], ["city"], ["room", "living room"],
          ["fence"], ["forest", "woods"], ["airport"], ["bed"], ["wave"], ["ramp"], ["dirt road", "path"],
          ["harbor", "dock"], ["bathroom"], ["restaurant", "diner"], ["counter", "countertop"], ["desk"],
          ["parking lot"], ["train station", "platform"], ["river", "stream"], ["mountain", "mountainside"],
          ["zoo", "enclosure"], ["tennis court", "court"], ["baseball field", "ballpark"], ["skate park"],
          ["market", "stand"], ["intersection", "corner"], ["bridge"], ["garden", "yard"], ["window"],
          ["plate", "dish"], ["bowl"], ["stage"], ["alley"], ["highway", "freeway"], ["pier"], ["barn"]]
PREPOSITIONS = ["on", "in", "near", "across", "beside", "along", "through", "by", "next to", "in front of", "down",
                "over", "under", "behind", "inside", "outside", "at", "toward", "around", "past"]
ADJECTIVES = ["brown", "black", "white", "red", "blue", "small", "large", "big", "little", "young", "old", "green",
              "yellow", "tall", "grassy", "busy", "empty", "wooden", "snowy", "sandy", "crowded", "colorful",
              "orange", "purple", "pink", "gray", "dark", "bright", "shiny", "dirty", "clean", "huge", "tiny",
              "narrow", "wide", "quiet", "rocky", "muddy", "wet", "dry", "fluffy", "furry", "striped", "spotted",
              "modern", "antique", "rusty", "metal", "plastic", "glass", "cozy", "sunny", "cloudy", "foggy"]
OBJECTS = ["frisbee", "kite", "umbrella", "ball", "bat", "racket", "surfboard", "skateboard", "backpack", "suitcase",
           "bottle", "cup", "bag", "hat", "helmet", "phone", "book", "newspaper", "camera", "leash", "tree", "pole",
           "sign", "lamp", "flag", "crowd", "fountain", "statue", "truck", "tent", "wall", "mirror", "sink",
           "refrigerator", "oven", "microwave", "toilet", "chair", "pillow", "blanket", "basket", "box", "bucket",
           "fence", "gate", "ladder", "rope", "bowl of fruit", "plate of food", "cup of coffee"]
EXTRAS = ["with {}", "near {}", "next to {}", "holding {}", "beside {}", "under {}", "in front of {}",
          "behind {}", "on a sunny day", "at night", "in the rain", "during the day", "under a blue sky",
          "in the background", "", "", ""]
COUNTS = ["two", "three", "four", "several", "a group of", "a few", "many", "a pair of", "a couple of"]


def _a(word: str) -> str:
    """`a dog`, `an old dog`."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _extra(rng: random.Random) -> str:
    return rng.choice(EXTRAS).format(_a(rng.choice(OBJECTS)))


def _scene(rng: random.Random) -> dict[str, Any]:
    return {"subject": rng.choice(SUBJECTS), "action": rng.choice(ACTIONS), "place": rng.choice(PLACES),
            "adjectives": rng.sample(ADJECTIVES, 3), "plural": rng.random() < 0.25, "extra": _extra(rng)}


def _caption(rng: random.Random, scene: dict[str, Any]) -> str:
    singular, plural = rng.choice(scene["subject"])
    present, gerund = scene["action"]
    place, preposition = rng.choice(scene["place"]), rng.choice(PREPOSITIONS)
    adjective, adjective2 = rng.choice(scene["adjectives"]), rng.choice(scene["adjectives"])
    extra = scene["extra"] if rng.random() < 0.6 else _extra(rng)
    if scene["plural"]:
        words = [rng.choice(COUNTS), adjective, plural, rng.choice(["are", ""]), gerund, preposition, "the", place,
                 extra]
    else:
        words = [
            [_a(adjective), singular, "is", gerund, preposition, _a(adjective2), place],
            [_a(singular), "that is", gerund, preposition, "the", place, extra],
            ["there is", _a(adjective), singular, gerund, preposition, _a(place)],
            ["the", singular, present, preposition, "the", adjective2, place, extra],
            [_a(adjective2), place, "with", _a(adjective), singular, gerund, extra],
        ][rng.randrange(5)]
    text = " ".join(w for w in words if w)
    if rng.random() < 0.7:
        text = text[0].upper() + text[1:]
    return text + rng.choice([".", ".", "", " .", "!"])


def synthetic_coco(n_images: int, refs_per_image: int = 5, seed: int = 0) -> tuple[dict[str, list], list[dict]]:
    """A COCO-format caption GT (`images`, `annotations`) and an official results list, the same for the same seed."""
    rng = random.Random(seed)
    images, annotations, results = [], [], []
    for k in range(n_images):
        image_id = 100_000 + 7 * k
        scene = _scene(rng)
        images.append({"id": image_id})
        for _ in range(refs_per_image):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": _caption(rng, scene)})
        seen = scene if rng.random() < 0.8 else dict(scene, subject=rng.choice(SUBJECTS), place=rng.choice(PLACES))
        results.append({"image_id": image_id, "caption": _caption(rng, seen)})
    return {"images": images, "annotations": annotations}, results


# --- the three sides -------------------------------------------------------------------------------------------

class _NoSpice:
    """Stands in for pycocoevalcap's Spice, whose constructor downloads CoreNLP; SPICE is timed on no side."""

    def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
        return 0.0, [0.0] * len(gts)

    def method(self) -> str:
        return "SPICE"


@contextlib.contextmanager
def _without_spice() -> Iterator[None]:
    from pycocoevalcap import eval as coco_eval

    original = coco_eval.Spice
    coco_eval.Spice = _NoSpice
    try:
        yield
    finally:
        coco_eval.Spice = original


def run_cocoevalcap(gt: Path, results: Path, workdir: Path | None = None) -> Scores:
    """pycocoevalcap's own evaluation, as its README runs it (its progress printout swallowed; `workdir` unused:
    its tokenizer writes into its install folder)."""
    from pycocoevalcap.eval import COCOEvalCap
    from pycocotools.coco import COCO

    with _without_spice(), contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        evaluator = COCOEvalCap(coco, coco.loadRes(str(results)))
        evaluator.evaluate()
    return ({name: float(evaluator.eval[name]) for name in METRICS},
            {i: {name: float(e[name]) for name in METRICS} for i, e in evaluator.imgToEval.items()})


def run_score_captions(gt: Path, results: Path, workdir: Path) -> Scores:
    scores = score_captions(results, gt, workdir=workdir)
    return scores.metrics, scores.per_image


def run_cli(gt: Path, results: Path, workdir: Path) -> Scores:
    """`python -m eval.caption score` in a fresh interpreter; the scores are read back from its report."""
    out = workdir / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "eval.caption", "score", "--results", str(results), "--annotations", str(gt),
         "--out", str(out), "--workdir", str(workdir)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m eval.caption score failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    written = json.loads((out / "caption_scores.json").read_text())
    per_image = json.loads((out / "caption_per_image.json").read_text())["images"]
    return written["metrics"], {row["image_id"]: {name: row[name] for name in METRICS} for row in per_image}


RUNNERS: dict[str, Callable[[Path, Path, Path], Scores]] = {
    "cocoevalcap": run_cocoevalcap, "score_captions": run_score_captions, "cli": run_cli,
}


# --- measuring -------------------------------------------------------------------------------------------------

def _cpu_seconds() -> float:
    """This process's and its waited-for children's CPU time: the JVMs do most of the work."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _warm_file_cache() -> None:
    """Read the jars and METEOR's paraphrase table once, so that the first side timed is not the one that loads them
    from disk."""
    from pycocoevalcap.meteor import meteor

    meteor_dir = Path(meteor.__file__).resolve().parent
    for path in [CORENLP_JAR, *meteor_dir.rglob("*.jar"), *meteor_dir.rglob("*.gz")]:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass


def _largest_difference(scores: Scores, reference: Scores) -> dict[str, Any]:
    """Per metric, the largest absolute difference from the reference over the corpus score and every image."""
    (metrics, per_image), (ref_metrics, ref_per_image) = scores, reference
    if set(per_image) != set(ref_per_image):
        return {"same_images": False}
    result: dict[str, Any] = {"same_images": True}
    for name in METRICS:
        result[name] = {
            "corpus": abs(metrics[name] - ref_metrics[name]),
            "per_image": max(abs(per_image[i][name] - ref_per_image[i][name]) for i in ref_per_image),
        }
    return result


def _summary(samples: list[float], cpu: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "samples_s": samples, "cpu_median_s": statistics.median(cpu), "cpu_samples_s": cpu}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    gt_data, results_data = synthetic_coco(args.images, args.refs, args.seed)
    gt, results = workdir / "gt.json", workdir / "results.json"
    gt.write_text(json.dumps(gt_data))
    results.write_text(json.dumps(results_data))
    captions = [a["caption"] for a in gt_data["annotations"]] + [r["caption"] for r in results_data]
    _warm_file_cache()

    sides = [s for s in SIDES if s in args.sides]
    wall: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    scores: dict[str, Scores] = {}
    for round_index in range(args.repeats):
        order = sides[round_index % len(sides):] + sides[:round_index % len(sides)]
        for side in order:
            side_dir = workdir / f"{side}-{round_index}"
            side_dir.mkdir()
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            scores[side] = RUNNERS[side](gt, results, side_dir)
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(_cpu_seconds() - start_cpu)
            if not args.quiet:
                print(f"round {round_index + 1}/{args.repeats} {side}: {wall[side][-1]:.2f} s", flush=True)

    timings = {s: _summary(wall[s], cpu[s]) for s in sides}
    ratios, equality = {}, {}
    if REFERENCE in sides:
        for side in (s for s in sides if s != REFERENCE):
            ratios[side] = {
                "median_over_cocoevalcap": timings[side]["median_s"] / timings[REFERENCE]["median_s"],
                "per_round": [a / b for a, b in zip(wall[side], wall[REFERENCE])],
                "cpu_median_over_cocoevalcap": timings[side]["cpu_median_s"] / timings[REFERENCE]["cpu_median_s"],
            }
            equality[side] = _largest_difference(scores[side], scores[REFERENCE])
    equal = all(
        d["same_images"] and all(max(d[m].values()) <= args.tolerance for m in METRICS) for d in equality.values()
    )
    targets = {
        side: {"le_1.0x_cocoevalcap": r["median_over_cocoevalcap"] <= 1.0,
               "under_60_s": timings[side]["median_s"] < 60.0}
        for side, r in ratios.items()
    }
    return {
        "data": {"images": args.images, "refs_per_image": args.refs, "seed": args.seed,
                 "captions": len(captions), "mean_words_per_caption": statistics.mean(len(c.split()) for c in captions),
                 "vocabulary": len({w.strip(".!").lower() for c in captions for w in c.split()})},
        "timings": timings,
        "ratios": ratios,
        "targets_met": targets,
        "scores": {side: s[0] for side, s in scores.items()},
        "largest_difference_from_cocoevalcap": equality,
        "tolerance": args.tolerance,
        "equal_to_cocoevalcap": equal,
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "java": require_java(),
        "pycocoevalcap": version("pycocoevalcap"),
        "repeats": args.repeats,
        "timing": "wall clock, rounds interleaved with a rotating order, medians; cpu = this process + its children",
        "shared_machine_note": "timings on a shared machine are noisy: compare the ratios of one run",
        "command": args.command,
    }


def format_table(results: dict[str, Any]) -> str:
    timings, ratios, data = results["timings"], results["ratios"], results["data"]
    labels = {"cocoevalcap": "COCOEvalCap (pycocoevalcap)", "score_captions": "`score_captions`",
              "cli": "`python -m eval.caption score`"}
    lines = ["| scorer | wall (median) | min - max | CPU incl. Java (median) | / COCOEvalCap (median) | per round |",
             "| --- | --- | --- | --- | --- | --- |"]
    for side, t in timings.items():
        r = ratios.get(side)
        lines.append(
            f"| {labels[side]} | {t['median_s']:.2f} s | {t['min_s']:.2f} - {t['max_s']:.2f} s | "
            f"{t['cpu_median_s']:.2f} s | " + (f"**{r['median_over_cocoevalcap']:.3f}** | "
                                               + ", ".join(f"{x:.3f}" for x in r["per_round"]) if r else "1 | -")
            + " |")
    env = results["environment"]
    differences = results["largest_difference_from_cocoevalcap"]
    largest = max((max(d[m].values()) for d in differences.values() for m in METRICS if d["same_images"]), default=0.0)
    lines += [
        "",
        f"{data['images']:,} images x {data['refs_per_image']} references + 1 candidate (synthetic, seed "
        f"{data['seed']}, {data['mean_words_per_caption']:.1f} words per caption, {data['vocabulary']} distinct "
        f"words); SPICE left out. {env['repeats']} interleaved rounds; {env['cpu_count']} CPUs, load average "
        f"{env['load_average_at_start'][0]:.2f} at start; {env['java']}; pycocoevalcap {env['pycocoevalcap']}. "
        f"Scores equal to COCOEvalCap's within {results['tolerance']:g}: "
        f"{'yes' if results['equal_to_cocoevalcap'] else 'NO'} (largest difference {largest:.2e}).",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5, help="reference captions per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (each side once per round)")
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ", ".join(SIDES))
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest score difference accepted")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    add_output_arguments(parser, DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = sorted(set(args.sides) - set(SIDES))
    if unknown or not args.sides:
        parser.error(f"--sides: unknown {unknown}; choose from {', '.join(SIDES)}")
    if args.images < 1 or args.refs < 1 or args.repeats < 1:
        parser.error("--images, --refs and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.command is None:
        args.command = command_line("bench/caption_scoring.py", argv)
    start = time.perf_counter()
    results: dict[str, Any] = {"environment": environment(args)}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="caption-bench-", dir=args.workdir) as tmp:
        results.update(run(args, Path(tmp)))
    results["environment"]["load_average_at_end"] = os.getloadavg()
    return report(results, format_table, args.out, args.quiet, time.perf_counter() - start)


if __name__ == "__main__":
    sys.exit(0 if main()["equal_to_cocoevalcap"] else 1)
