"""Regenerate the bundled samples under data/samples/ (deterministic; run from the repository root):

    .venv/bin/python data/samples/make_samples.py [OUT_DIR]

coco/: six public-domain/CC0 photos from scikit-image's data module (ids 900001-900006 are invented, not COCO
ids), five hand-written captions each, in the three formats the readers accept:
  annotations/captions_{train,val}2014.json   official COCO format
  dataset_coco.json                           Karpathy split (train, restval, val, test)
  coco_karpathy_{train,val,test}.json         LAVIS/BLIP format
  {train,val}2014/COCO_{split}2014_<id>.jpg   images (<= 224 px)
scienceqa/: nine hand-written problems in the official schema (problems.json, pid_splits.json with all seven
split names, images/{split}/{pid}/image.png), across subjects, grades, and hint/image combinations.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import skimage.data
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent

# (id, folder, karpathy split, skimage name, captions)
COCO_IMAGES = [
    (900001, "val2014", "test", "astronaut", [
        "A smiling astronaut in an orange flight suit poses beside an American flag.",
        "A woman in an orange space suit stands next to a model of the space shuttle.",
        "An astronaut with short brown hair smiles with her helmet in front of her.",
        "Official portrait of a female astronaut wearing an orange pressure suit.",
        "A woman in an orange suit with patches, with a flag and a shuttle model behind her.",
    ]),
    (900002, "val2014", "test", "coffee", [
        "A cup of espresso on a red saucer with a spoon on a wooden table.",
        "A red coffee cup and saucer sitting on a wooden surface.",
        "Top view of a small cup of coffee with a silver spoon.",
        "An espresso in a red and white cup on a wooden table.",
        "A cup of coffee with crema on a matching red saucer.",
    ]),
    (900003, "train2014", "train", "chelsea", [
        "A close up of a tabby cat with green eyes.",
        "A striped cat looks to the side with wide eyes.",
        "The face of a brown tabby cat in front of a blurry background.",
        "A cat with yellow green eyes and a pink nose.",
        "Close view of a tabby cat's head and whiskers.",
    ]),
    (900004, "val2014", "restval", "rocket", [
        "A rocket stands on a launch pad at dusk between tall towers.",
        "A white rocket on the launch pad with bright lights around it.",
        "Lightning towers surround a rocket ready for launch in the evening.",
        "A launch pad lit up at dusk with a rocket in the middle.",
        "A tall rocket waits for liftoff under a dark blue sky.",
    ]),
    (900005, "val2014", "val", "camera", [
        "A black and white photo of a man using a camera on a tripod.",
        "A man in a dark coat looks through a camera on a grassy field.",
        "A photographer stands on the grass behind an old camera on a tripod.",
        "A man filming with a tripod camera with buildings in the distance.",
        "A black and white picture of a cameraman on a lawn.",
    ]),
    (900006, "train2014", "train", "hubble_deep_field", [
        "A dark sky full of many small galaxies.",
        "A deep space image with hundreds of colorful galaxies.",
        "Many tiny stars and galaxies scattered on a black background.",
        "A telescope view of distant galaxies in space.",
        "Small bright points of light of different colors in a black sky.",
    ]),
]


def _file_name(image_id: int, folder: str) -> str:
    return f"COCO_{folder}_{image_id:012d}.jpg"


def _save_photo(name: str, path: Path, size: int, fmt: str) -> tuple[int, int]:
    im = Image.fromarray(getattr(skimage.data, name)())  # camera stays grayscale, as some COCO images are
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        im.save(path, "JPEG", quality=85, optimize=True)
    else:
        im.convert("RGB").save(path, "PNG", optimize=True)
    return im.size


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", caption.lower())


def make_coco(out: Path) -> None:
    official: dict[str, dict] = {}
    karpathy, lavis = [], {"train": [], "val": [], "test": []}
    sentid = 0
    ann_id = 1
    for imgid, (image_id, folder, split, name, captions) in enumerate(COCO_IMAGES):
        fname = _file_name(image_id, folder)
        width, height = _save_photo(name, out / folder / fname, 224, "JPEG")
        o = official.setdefault(folder, {
            "info": {"description": f"mm-excitor sample in the COCO {folder} captions format: scikit-image photos, "
                                    "invented ids, hand-written captions", "version": "1.0", "year": 2014},
            "licenses": [{"id": 1, "name": "Public domain or CC0 (see skimage.data docstrings)", "url": ""}],
            "type": "captions", "images": [], "annotations": []})
        o["images"].append({"license": 1, "file_name": fname, "coco_url": "", "height": height, "width": width,
                            "date_captured": "", "flickr_url": "", "id": image_id})
        sentences = []
        for c in captions:
            o["annotations"].append({"image_id": image_id, "id": ann_id, "caption": c})
            ann_id += 1
            sentences.append({"tokens": _tokens(c), "raw": c, "imgid": imgid, "sentid": sentid})
            sentid += 1
        karpathy.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": fname,
                         "imgid": imgid, "split": split, "sentences": sentences, "cocoid": image_id})
        key = f"{folder}/{fname}"
        if split in ("train", "restval"):
            lavis["train"] += [{"caption": c, "image": key, "image_id": f"coco_{image_id}"} for c in captions]
        else:
            lavis[split].append({"image": key, "caption": list(captions)})
    for folder, data in official.items():
        _write_json(out / "annotations" / f"captions_{folder}.json", data)
    _write_json(out / "dataset_coco.json", {"images": karpathy, "dataset": "coco"})
    for split, entries in lavis.items():
        _write_json(out / f"coco_karpathy_{split}.json", entries)


def _problem(question, choices, answer, hint, image, grade, subject, topic, category, skill, lecture, solution,
             split):
    return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": image,
            "task": "closed choice", "grade": grade, "subject": subject, "topic": topic, "category": category,
            "skill": skill, "lecture": lecture, "solution": solution, "split": split}


SQA_PROBLEMS = {
    "1": _problem(
        "What kind of animal is in this picture?", ["a bird", "a fish", "a mammal"], 2, "", "image.png",
        "grade2", "natural science", "biology", "Classification", "Identify mammals, birds, and fish",
        "Mammals have fur or hair and feed their young milk. Birds have feathers and wings. "
        "Fish live in water and breathe with gills.",
        "The animal in the picture is a cat. A cat has fur and feeds its kittens milk. So, it is a mammal.",
        "train"),
    "2": _problem(
        "Will these magnets attract or repel each other?", ["repel", "attract"], 0,
        "Two magnets are placed as shown.\n\nHint: Magnets that attract pull together. "
        "Magnets that repel push apart.", "image.png",
        "grade2", "natural science", "physics", "Magnets", "Predict whether magnets will attract or repel",
        "Magnets can pull or push on each other without touching. Like poles repel. Opposite poles attract.",
        "The south pole of one magnet is closest to the south pole of the other. Like poles repel. "
        "So, these magnets will repel each other.",
        "train"),
    "3": _problem(
        "Which change of state happened to the water?", ["melting", "freezing", "boiling"], 1,
        "Maya put a glass of water in the freezer. After two hours, the water had turned solid.", None,
        "grade4", "natural science", "physics", "States of matter", "Identify changes of state",
        "Matter can change from one state to another. Freezing is a change from a liquid to a solid.",
        "The water changed from a liquid to a solid. So, the change of state was freezing.",
        "train"),
    "4": _problem(
        "Select the elementary substance.", ["water (H2O)", "ozone (O3)", "hydrogen peroxide (H2O2)"], 1, "", None,
        "grade10", "natural science", "chemistry", "Atoms and molecules",
        "Classify elementary substances and compounds",
        "An elementary substance is made of only one chemical element. A compound is made of two or more.",
        "Ozone (O3) is made of oxygen atoms only. So, ozone is an elementary substance.",
        "train"),
    "5": _problem(
        "Which tense does the sentence use?\nMona will print her name with care.",
        ["present tense", "future tense", "past tense"], 1, "", None,
        "grade5", "language science", "verbs", "Verb tense", "Is the sentence in the past, present, or future tense?",
        "Present tense verbs tell you about something that is happening now. Future tense verbs tell you about "
        "something that is going to happen. Past tense verbs tell you about something that has already happened.",
        "The sentence is in future tense. You can tell because it uses will before the main verb, print.",
        "val"),
    "6": _problem(
        "What kind of energy is stored in the rocket's fuel before it burns?", ["sound energy", "chemical energy"],
        1, "", "image.png",
        "grade8", "natural science", "physics", "Energy", "Identify forms of energy",
        "Energy can take different forms. Chemical energy is stored in the bonds between atoms of a substance.",
        "Fuel stores energy in its chemical bonds and releases it when it burns. So, it stores chemical energy.",
        "val"),
    "7": _problem(
        "Is a cup of coffee a good or a service?", ["a service", "a good"], 1, "", "image.png",
        "grade3", "social science", "economics", "Goods and services", "Identify goods and services",
        "Everything you can buy is either a good or a service.\nA good is something you can touch or hold in "
        "your hands.\nA service is a job you pay someone else to do.",
        "To decide whether a cup of coffee is a good or a service, ask these questions:\nIs a cup of coffee "
        "something you can touch? Yes.\nIs a cup of coffee a job you might pay someone else to do? No.\n"
        "So, a cup of coffee is a good.",
        "test"),
    "8": _problem(
        "Which of these is a right protected by the First Amendment of the U.S. Constitution?",
        ["the right to vote at age 18", "freedom of speech", "the right to a speedy trial", "the right to bear arms"],
        1, "", None,
        "grade8", "social science", "civics", "The Constitution", "Identify rights in the Bill of Rights",
        "The First Amendment protects freedom of religion, speech, the press, assembly, and petition.",
        "Freedom of speech is protected by the First Amendment. The other rights come from other amendments.",
        "test"),
    "9": _problem(
        "What does the simile in this text suggest?", ["The room was very tidy.", "The room was small."], 0,
        "Tom's room was as neat as a pin after he cleaned it.", None,
        "grade9", "language science", "figurative-language", "Interpret figures of speech",
        "Interpret similes",
        "A simile compares two things that are not alike, using like or as.",
        "The text compares the room to a pin, which is neat and tidy. So, the room was very tidy.",
        "test"),
}
SQA_SPLITS = {"train": ["1", "2", "3", "4"], "val": ["5", "6"], "test": ["7", "8", "9"],
              "trainval": ["1", "2", "3", "4", "5", "6"], "minitrain": ["1", "2"], "minival": ["5"],
              "minitest": ["7", "8"]}
SQA_PHOTOS = {"1": "chelsea", "6": "rocket", "7": "coffee"}


def _magnets(path: Path) -> None:
    """Two bar magnets, south pole facing south pole (problem 2: they repel)."""
    im = Image.new("RGB", (160, 48), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=14)
    for x0, left, right in ((6, "N", "S"), (84, "S", "N")):
        for i, pole in enumerate((left, right)):
            box = (x0 + 35 * i, 12, x0 + 35 * (i + 1), 36)
            draw.rectangle(box, fill=(200, 80, 80) if pole == "N" else (70, 110, 200), outline="black")
            draw.text((box[0] + 13, 15), pole, fill="white", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "PNG", optimize=True)


def make_scienceqa(out: Path) -> None:
    for pid, p in SQA_PROBLEMS.items():
        if p["image"]:
            path = out / "images" / p["split"] / pid / p["image"]
            if pid in SQA_PHOTOS:
                _save_photo(SQA_PHOTOS[pid], path, 128, "PNG")
            else:
                _magnets(path)
    _write_json(out / "problems.json", SQA_PROBLEMS)
    _write_json(out / "pid_splits.json", SQA_SPLITS)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(out: Path = HERE) -> None:
    """Write coco/ and scienceqa/ under ``out`` (default: next to this script), replacing what is there."""
    for name, make in (("coco", make_coco), ("scienceqa", make_scienceqa)):
        shutil.rmtree(out / name, ignore_errors=True)
        make(out / name)
    size = sum(f.stat().st_size for d in ("coco", "scienceqa") for f in (out / d).rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
