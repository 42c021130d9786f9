"""eval/probe.py: answers scored as chat replies exactly as the tokenizer renders them, option ranking and the
held-out answer NLL against the LM's own loss, every method at initialisation scoring as the frozen base, and the
CLI on tiny assets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval import probe
from mm_excitor.vision_language import IGNORE_INDEX
from tests.delia.helpers import chat_tokenizer
from tests.tiny_models import tiny_method_model, tiny_model, tiny_tokenizer

SMOLLM2 = Path(__file__).resolve().parents[2] / ".cache" / "smollm2-135m-instruct"
QUESTIONS = [
    {"id": "q1", "category": "colour", "question": "the red circle ?", "options": ["red", "blue", "green"],
     "answer": 0},
    {"id": "q2", "category": "colour", "question": "is the square blue ?", "options": ["yes", "no"], "answer": 0},
    {"id": "q3", "category": "shape", "question": "describe the image",
     "options": ["a small circle", "two large squares left of a triangle", "three"], "answer": 2},
]
PAIRS = [("describe the red circle", "a red circle"), ("is the square blue ?", "no the square is green")]


def rendered(tokenizer, prompt: str, answer: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def test_an_answer_row_is_the_templates_own_rendering_with_labels_on_the_reply_and_end_of_turn():
    tokenizer = chat_tokenizer()
    ids, labels = probe.answer_row(tokenizer, "is the square blue ?", "no the square is green")
    assert ids == rendered(tokenizer, "is the square blue ?", "no the square is green")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "is the square blue ?"}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert labels == [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]
    assert tokenizer.decode(ids[len(prompt):]) == "no the square is green </s>"


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 not converted (make demo)")
def test_smollm2_replies_end_at_im_end_and_leave_the_templates_newline_out():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, local_files_only=True)
    ids, labels = probe.answer_row(tokenizer, "What is 7 + 5?", "12")
    full = rendered(tokenizer, "What is 7 + 5?", "12")
    assert full[:len(ids)] == ids and tokenizer.decode(full[len(ids):]) == "\n"
    reply = [token for token in labels if token != IGNORE_INDEX]
    assert tokenizer.decode(reply) == "12<|im_end|>" and ids[-len(reply):] == reply


def test_a_tokenizer_without_a_chat_template_or_an_empty_answer_is_refused():
    with pytest.raises(ValueError, match="has no chat template"):
        probe.answer_row(tiny_tokenizer(), "yes", "no")
    with pytest.raises(ValueError, match="empty answer"):
        probe.answer_row(chat_tokenizer(), "yes", " ")


def own_log_likelihood(model, tokenizer, prompt: str, answer: str) -> float:
    """The LM's own loss on one unpadded row, times its label count, negated."""
    ids, labels = probe.answer_row(tokenizer, prompt, answer)
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return -float(loss) * sum(label != IGNORE_INDEX for label in labels[1:])


def test_options_are_ranked_by_their_own_log_likelihood_and_accuracy_is_counted_per_category():
    lm, tokenizer = tiny_model(seed=3), chat_tokenizer()
    result = probe.score_probe(probe.FrozenLanguageModel(lm), tokenizer, QUESTIONS, batch_size=2)
    for question, prediction in zip(QUESTIONS, result["predictions"]):
        expected = [own_log_likelihood(lm, tokenizer, question["question"], o) for o in question["options"]]
        torch.testing.assert_close(prediction["log_likelihoods"], expected, rtol=1e-4, atol=1e-4)
        assert prediction["choice"] == max(range(len(expected)), key=expected.__getitem__)
        lengths = [len(o.encode()) for o in question["options"]]
        assert prediction["choice_norm"] == max(range(len(expected)), key=lambda j: expected[j] / lengths[j])
    right = [p["choice"] == q["answer"] for q, p in zip(QUESTIONS, result["predictions"])]
    assert result["accuracy"] == pytest.approx(100 * sum(right) / 3)
    assert result["categories"]["colour"]["accuracy"] == pytest.approx(50 * sum(right[:2]))
    assert result["categories"]["colour"]["chance"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
    assert result["chance"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 3) / 3)


def test_the_held_out_nll_is_the_lms_own_loss_over_all_reply_tokens():
    lm, tokenizer = tiny_model(seed=4), chat_tokenizer()
    rows = [probe.answer_row(tokenizer, q, a) for q, a in PAIRS]
    counts = [sum(label != IGNORE_INDEX for label in labels) for _, labels in rows]
    expected = -sum(own_log_likelihood(lm, tokenizer, q, a) for q, a in PAIRS) / sum(counts)
    nll = probe.answer_nll(probe.FrozenLanguageModel(lm), tokenizer, PAIRS, batch_size=1)
    assert nll == pytest.approx(expected, rel=1e-5)
    assert probe.answer_nll(probe.FrozenLanguageModel(lm), tokenizer, PAIRS, batch_size=2) == pytest.approx(nll,
                                                                                                           rel=1e-5)


@pytest.mark.parametrize("method", ["excitor", "lora", "llama_adapter", "prefix"])
def test_every_method_at_initialisation_scores_text_as_the_frozen_base(method):
    base, tokenizer = tiny_model(seed=5), chat_tokenizer()
    model = tiny_method_model(method, base=base)
    model.tokenizer = tokenizer
    ours = probe.retention(model, tokenizer, QUESTIONS, PAIRS, batch_size=2)
    frozen = probe.retention(probe.FrozenLanguageModel(base), tokenizer, QUESTIONS, PAIRS, batch_size=2)
    assert ours["probe"] == frozen["probe"]
    assert ours["heldout_nll"] == pytest.approx(frozen["heldout_nll"], rel=1e-5)


def test_a_bad_probe_record_is_named(tmp_path):
    path = tmp_path / "probe.jsonl"
    good = {"id": "a", "category": "c", "question": "q", "options": ["x", "y"], "answer": 1}
    for record, problem in [({**good, "answer": 2}, "answer is not an index"),
                            ({**good, "options": ["x", "x"]}, "options are not two or more distinct"),
                            ({**good, "question": ""}, "no question")]:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**record, "id": "b"}) + "\n")
        with pytest.raises(ValueError, match=rf"probe\.jsonl: record 2 \(b\): {problem}"):
            probe.load_probe(path)


def test_the_cli_scores_a_frozen_lm_directory_and_writes_json(tmp_path, capsys):
    tiny_model(seed=6).save_pretrained(tmp_path / "lm")
    chat_tokenizer().save_pretrained(tmp_path / "lm")
    questions = tmp_path / "probe.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    result = probe.main(["--base", str(tmp_path / "lm"), "--probe", str(questions), "--out", str(tmp_path / "r.json"),
                         "--batch-size", "4"])
    assert json.loads((tmp_path / "r.json").read_text())["probe"]["accuracy"] == result["probe"]["accuracy"]
    assert result["heldout_nll"] > 0 and "| shape | 1 |" in capsys.readouterr().out
    from tasks import probe as run_probe  # a trained run: `python -m tasks.probe TASK --run RUN`

    with pytest.raises(SystemExit, match="2"):  # argparse: the task the run was trained by is required
        run_probe.main(["--run", str(tmp_path)])
