"""The instruction-data readers: every format into one record, and every kind of bad record named by file and
index (or skipped and counted)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.instruct import InstructDataset
from data.errors import DataError, ImageError, UnsafePathError
from data.instruct import read_conversations

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "instruct"
IMAGES = SAMPLES / "images"


def read(name: str, **kwargs):
    return read_conversations([SAMPLES / name], image_root=IMAGES, **kwargs)[0]


def test_alpaca_joins_instruction_and_input_as_the_user_turn():
    records = read("alpaca.json")
    assert len(records) == 8 and records[1].id == "alpaca-1" and records[1].image is None
    assert records[1].messages == ({"role": "user", "content": "Translate the sentence into French.\n\n"
                                                               "The cat is on the table."},
                                   {"role": "assistant", "content": "Le chat est sur la table."})
    assert records[2].messages[0] == {"role": "user", "content": "What is the capital of Italy?"}


def test_alpaca_jsonl_and_a_system_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi.", "system": "Be kind."}) + "\n\n")
    (record,), report = read_conversations([path])
    assert [m["role"] for m in record.messages] == ["system", "user", "assistant"] and report.kept == 1


def test_chat_messages_keep_system_and_every_turn():
    records = read("messages.jsonl")
    assert [r.id for r in records] == ["m0", "m1", "m2", "m3", "m4", "m5"]
    assert [m["role"] for m in records[3].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert records[1].messages[3] == {"role": "assistant", "content": "Ash."}


def test_sharegpt_maps_human_gpt_system():
    records = read("sharegpt.json")
    assert records[1].messages == (
        {"role": "system", "content": "You are a friendly tutor."}, {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": "6 times 7 is 42."}, {"role": "user", "content": "And 6 times 8?"},
        {"role": "assistant", "content": "6 times 8 is 48."})


def test_llava_images_resolve_under_the_root_and_the_placeholder_never_reaches_the_text():
    records = read("llava.json")
    assert records[0].image == IMAGES / "red_circle.png" and records[0].image_key == "red_circle.png"
    assert records[0].messages[0] == {"role": "user", "content": "What colour is the shape?"}
    assert records[1].messages[0]["content"] == "What shape is in the picture?"
    assert records[3].image is None  # a text-only record of the same file
    assert not any("<image>" in m["content"] for r in records for m in r.messages)


def test_formats_are_detected_per_file_or_named():
    files = [SAMPLES / n for n in ("alpaca.json", "messages.jsonl", "sharegpt.json", "llava.json")]
    records, _ = read_conversations(files, image_root=IMAGES)
    assert len(records) == 8 + 6 + 4 + 5
    assert len(read_conversations([files[2]], fmt="sharegpt")[0]) == 4
    with pytest.raises(ValueError, match="unknown instruction data format"):
        read_conversations([files[0]], fmt="dolly")


def write(tmp_path: Path, records: list) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat(*turns, **extra):
    return {"id": "x1", "conversations": [{"from": f, "value": v} for f, v in turns], **extra}


GOOD = chat(("human", "hi"), ("gpt", "hello"))


@pytest.mark.parametrize("record, problem", [
    ({"id": "x1", "text": "hello"}, "no known instruction format"),
    (chat(("gpt", "hello"), ("human", "hi")), "does not start with a user turn"),
    (chat(("system", "s"), ("gpt", "hello")), "does not start with a user turn"),
    (chat(("human", "hi"), ("gpt", "   ")), "empty answer"),
    (chat(("human", "hi"), ("human", "again"), ("gpt", "ok")), "roles out of order"),
    (chat(("human", "hi"), ("gpt", "a"), ("gpt", "b")), "roles out of order"),
    (chat(("human", "hi"), ("gpt", "a"), ("human", "more?")), "ends with a user turn"),
    (chat(("human", "<image>\nwhat is it?"), ("gpt", "a cat")), "<image> placeholder but no image"),
    (chat(("robot", "hi"), ("gpt", "hello")), "unknown role"),
])
def test_a_bad_record_is_one_error_naming_the_file_and_the_record(tmp_path, record, problem):
    path = write(tmp_path, [record] if problem == "no known instruction format" else [GOOD, record])
    index = 0 if problem == "no known instruction format" else 1
    with pytest.raises(DataError, match=problem) as error:
        read_conversations([path], image_root=IMAGES)
    message = str(error.value)
    assert str(path) in message and f"record {index}" in message and "\n" not in message


def test_bad_records_are_skipped_and_counted_when_asked(tmp_path):
    path = write(tmp_path, [GOOD, chat(("gpt", "x"), ("human", "y")), GOOD, chat(("human", "q"), ("gpt", ""))])
    records, report = read_conversations([path], on_bad_record="skip")
    assert len(records) == report.kept == 2 and len(report.skipped) == 2
    assert "record 1" in report.skipped[0] and "record 3" in report.skipped[1]


def test_an_image_path_that_leaves_its_root_is_refused(tmp_path):
    path = write(tmp_path, [chat(("human", "<image> what?"), ("gpt", "x"), image="../../etc/passwd")])
    with pytest.raises(UnsafePathError, match="outside the image root") as error:
        read_conversations([path], image_root=IMAGES)
    assert str(path) in str(error.value) and "record 0" in str(error.value)


def test_a_missing_image_file_is_named_with_its_record(tmp_path):
    path = write(tmp_path, [chat(("human", "<image> what?"), ("gpt", "x"), image="nowhere.png")])
    records, _ = read_conversations([path], image_root=IMAGES)
    with pytest.raises(ImageError, match="nowhere.png") as error:
        InstructDataset(records, image_transform=lambda image: image)
    assert str(path) in str(error.value) and "record 0 (id x1)" in str(error.value)
    dataset = InstructDataset(records, image_transform=lambda image: image, on_bad_image="skip")
    assert len(dataset) == 0 and len(dataset.skipped) == 1


def test_items_carry_messages_the_image_and_the_held_out_answer():
    import torch

    records = read("llava.json")
    dataset = InstructDataset(records, image_transform=lambda image: torch.zeros(3, 4, 4))
    item, text_only = dataset[0], dataset[3]
    assert item["has_image"] and item["image"].shape == (3, 4, 4) and len(item["messages"]) == 4
    assert item["prompt"] == "What shape is it?" and item["meta"] == {"id": "000000001", "image_key": "red_circle.png",
                                                                       "reference": "A circle."}
    assert not text_only["has_image"] and "image" not in text_only
