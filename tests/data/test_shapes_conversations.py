"""The shapes conversation set: deterministic, read by the LLaVA reader, answers true of the scene, and every
follow-up refers back to the object the earlier turn named."""
from __future__ import annotations

from data.instruct import read_conversations
from data.shapes_conversations import NUMBER_WORDS, main
from data.shapes_scene import ShapesConfig, item_rng, sample_scene

FLAGS = ["--num-images", "30", "--seed", "3", "--image-size", "32", "--val-fraction", "0.1", "--test-fraction", "0.2"]


def test_same_flags_same_bytes_and_the_llava_reader_reads_every_split(tmp_path):
    main(["--out", str(tmp_path / "a"), *FLAGS])
    main(["--out", str(tmp_path / "b"), *FLAGS])
    for name in ("train.json", "val.json", "test.json", "manifest.json", "images/test/conv_000030.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    counts = {}
    for split in ("train", "val", "test"):
        records, _ = read_conversations([tmp_path / "a" / f"{split}.json"], image_root=tmp_path / "a" / "images")
        assert all(r.image.is_file() for r in records)
        counts[split] = len(records)
    assert counts == {"train": 21, "val": 3, "test": 6}


def test_answers_are_true_of_the_scene_and_follow_ups_refer_back(tmp_path):
    main(["--out", str(tmp_path), *FLAGS])
    config = ShapesConfig(num_images=30, seed=3, image_size=32, val_fraction=0.1, test_fraction=0.2)
    records = [r for split in ("train", "val", "test")
               for r in read_conversations([tmp_path / f"{split}.json"], image_root=tmp_path / "images")[0]]
    follow_ups = 0
    for index, record in enumerate(records):
        scene = sample_scene(config, item_rng(3, "conversations", index))
        turns = list(zip(record.messages[0::2], record.messages[1::2]))
        assert [m["role"] for m in record.messages[::2]] == ["user"] * len(turns)
        assert turns[-1][0]["content"].startswith(("And what", "How many"))  # the held-out turn needs the image
        pairs = [(q["content"], a["content"]) for q, a in turns]
        (first, first_answer), = [(q, a) for q, a in pairs if q.startswith("What")]
        referent = next(o for o in scene.objects if first_answer in (o.colour, f"a {o.shape}")
                        and (len(scene.objects) == 1 or o.position in first))
        for question, answer in pairs:
            if question.startswith("How many"):
                colour = question.split()[2] if question.split()[2] != "shapes" else None
                assert answer == NUMBER_WORDS[sum(colour in (None, o.colour) for o in scene.objects)]
                assert colour != referent.colour  # the count never names the colour the pair asks about
            elif question.startswith("And what"):
                follow_ups += 1
                assert answer == (referent.colour if "colour" in question else f"a {referent.shape}")
    assert follow_ups == len(records)
