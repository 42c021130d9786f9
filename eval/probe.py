"""What tuning kept: the capability probe's accuracy (data/probe.py) and the answer NLL of held-out human-written
instructions (data/heldout.py), both text-only and through the model's own chat template.

    python -m eval.probe --base .cache/smollm2-135m-instruct            # the frozen base LM
    python -m tasks.probe caption --run runs/compare/shapes-caption/excitor/lr0.02 --out R.json   # a trained run

Every answer is scored as the assistant's reply to its question: the tokens of the tokenizer's own
``apply_chat_template([user, assistant])`` after the generation prompt, up to and including the end-of-turn token
(the template's ``<|im_end|>`` for SmolLM2), get the model's summed log-probability (``label_log_likelihoods``,
whatever the method). A probe question's prediction is its best-scored option (ties: the first); ``accuracy`` ranks
by the sum (lm-evaluation-harness's ``acc``, the project's ScienceQA likelihood protocol), ``accuracy_norm`` by the
sum divided by the option's UTF-8 length (lm-evaluation-harness's ``acc_norm``), both reported; ``accuracy`` is the
headline. The held-out NLL is the summed negative log-probability of the reference answers over their token count
(answer tokens and the end-of-turn token).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from data.errors import DataError
from data.heldout import PROBE_FILE, heldout_instructions
from data.instruct import read_records
from mm_excitor.cli import run_cli
from mm_excitor.io import atomic_write_json
from mm_excitor.delia.chat import encode_chat_prompt, has_chat_template, stop_token_ids
from mm_excitor.vision_language import IGNORE_INDEX, summed_label_log_probs

Row = tuple[list[int], list[int]]


class FrozenLanguageModel:
    """A Hugging Face causal LM with the one scoring call every method has (`label_log_likelihoods`): the frozen
    base, scored without building a vision encoder."""

    def __init__(self, language_model: Any) -> None:
        self.language_model = language_model

    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    @torch.no_grad()
    def label_log_likelihoods(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              labels: torch.Tensor) -> torch.Tensor:
        logits = self.language_model(input_ids=input_ids, attention_mask=attention_mask).logits
        return summed_label_log_probs(logits, labels)


def answer_row(tokenizer: Any, prompt: str, answer: str) -> Row:
    """(input ids, labels) of `answer` as the assistant's reply to the user turn `prompt`: the tokenizer's own
    rendering of [user, assistant] through the assistant's end-of-turn token, labels on the reply only."""
    if not has_chat_template(tokenizer):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat template: the probe and the held-out "
                         "NLL score answers as chat replies")
    if not answer.strip():
        raise ValueError(f"empty answer to {prompt!r}")
    user = [{"role": "user", "content": prompt}]
    prompt_ids = encode_chat_prompt(tokenizer, user)
    full = list(tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=True,
                                              return_dict=True)["input_ids"])
    if full[:len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the chat template's rendering of {prompt!r} with its answer does not start with the "
                         "rendering of the question alone: answers cannot be scored as replies")
    reply = full[len(prompt_ids):]
    stops = set(stop_token_ids(tokenizer))
    end = next((n for n, token in enumerate(reply) if token in stops), None)
    if end is None:
        raise ValueError(f"the chat template ends the assistant turn of {prompt!r} with none of the end-of-turn ids "
                         f"{sorted(stops)}")
    reply = reply[:end + 1]
    return prompt_ids + reply, [IGNORE_INDEX] * len(prompt_ids) + reply


@torch.no_grad()
def row_log_likelihoods(model: Any, rows: Sequence[Row], pad_id: int, batch_size: int) -> list[float]:
    """Each row's summed label log-probability, in batches of similar lengths (right-padded; a row's score does
    not depend on its batch)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    scores = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rows[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            tokens, targets = rows[i]
            ids[row, :len(tokens)] = torch.tensor(tokens)
            labels[row, :len(targets)] = torch.tensor(targets)
            mask[row, :len(tokens)] = 1
        device = model.device
        totals = model.label_log_likelihoods(input_ids=ids.to(device), attention_mask=mask.to(device),
                                             labels=labels.to(device))
        for i, total in zip(chunk, totals.tolist()):
            scores[i] = total
    return scores


def prompt_sharing(model: Any) -> tuple[Any, int] | None:
    """(the causal LM that `model` scores text with, the virtual tokens it keeps before the text) when a question's
    prompt can be run once and its options scored against the prompt's KV cache with the same result as scoring
    every option's full row: the frozen LM, and the methods that adapt it in place (the Excitor, LoRA, LLaMA-Adapter,
    the visual prefix; text-only they run `language_model(input_ids, attention_mask)`). peft's prefix-tuning
    (`text_prefix`) prepends its own key/value cache: its base model is run after `get_prompt`'s cache, at the
    positions peft gives the text. None (every option's full row is scored) for any other peft wrapper."""
    from peft import PeftModel, PeftType

    language_model = getattr(model, "language_model", None)
    if language_model is None:
        return None
    if not isinstance(language_model, PeftModel):
        return language_model, 0
    config = language_model.active_peft_config
    if config.peft_type != PeftType.PREFIX_TUNING:
        return None
    return language_model, config.num_virtual_tokens


def _right_padded(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), B x max length, each row right-padded."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, :len(row)] = torch.tensor(row)
        mask[n, :len(row)] = 1
    return ids, mask


@torch.no_grad()
def shared_prompt_log_likelihoods(language_model: Any, virtual_tokens: int, prompts: Sequence[list[int]],
                                  replies: Sequence[Sequence[list[int]]], pad_id: int) -> list[list[float]]:
    """Each reply's summed log-probability after its prompt, every prompt run once: the prompts' KV cache is
    repeated to their replies, which are scored in one batch at the positions that follow their prompt (prompts
    and replies right-padded, the padding masked out, so a row's score does not depend on its batch). With
    `virtual_tokens` (peft prefix-tuning, `prompt_sharing`) the base model runs after peft's own prefix cache."""
    from transformers import DynamicCache

    model = language_model
    device = language_model.get_input_embeddings().weight.device
    cache = DynamicCache()
    if virtual_tokens:
        width = max(len(p) for p in prompts) + max(len(r) for options in replies for r in options)
        cache = language_model.get_prompt(len(prompts), max_cache_len=virtual_tokens + width)
        model = language_model.get_base_model()
    prompt_ids, prompt_mask = (t.to(device) for t in _right_padded(prompts, pad_id))
    lengths = prompt_mask.sum(1)
    prefix = torch.ones((len(prompts), virtual_tokens), dtype=torch.long, device=device)
    positions = virtual_tokens + torch.arange(prompt_ids.shape[1], device=device)[None].expand(len(prompts), -1)
    out = model(input_ids=prompt_ids, attention_mask=torch.cat([prefix, prompt_mask], 1), position_ids=positions,
                past_key_values=cache, use_cache=True)
    first = out.logits[torch.arange(len(prompts), device=device), lengths - 1].float().log_softmax(-1)
    owners = torch.tensor([n for n, options in enumerate(replies) for _ in options], device=device)
    cache = out.past_key_values
    cache.reorder_cache(owners)
    reply_ids, reply_mask = (t.to(device) for t in _right_padded([r for options in replies for r in options], pad_id))
    positions = (virtual_tokens + lengths[owners, None]
                 + torch.arange(reply_ids.shape[1], device=device)[None])
    mask = torch.cat([prefix[owners], prompt_mask[owners], reply_mask], 1)
    logits = model(input_ids=reply_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True).logits
    # reply token 0 follows the prompt's last token; token t > 0 follows reply token t - 1
    logp = torch.cat([first[owners, None], logits[:, :-1].float().log_softmax(-1)], 1)
    token = logp.gather(-1, reply_ids[..., None])[..., 0]
    totals = (token * reply_mask).sum(1).tolist()
    scores, start = [], 0
    for options in replies:
        scores.append(totals[start:start + len(options)])
        start += len(options)
    return scores


def option_log_likelihoods(model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]], batch_size: int,
                           share_prompt: bool = True) -> list[list[float]]:
    """Each question's options' summed log-likelihoods as replies to the question (`answer_row`). With
    `share_prompt`, where `prompt_sharing` allows it, the question's prompt runs once for all its options and
    questions are batched by about `batch_size` options; else (and for other models) every option's full row is
    scored (`row_log_likelihoods`). Both give the same scores up to float rounding."""
    rows = [[answer_row(tokenizer, question["question"], option) for option in question["options"]]
            for question in questions]
    sharing = prompt_sharing(model) if share_prompt else None
    if sharing is None:
        flat = row_log_likelihoods(model, [row for options in rows for row in options], pad_id(tokenizer), batch_size)
        scores, start = [], 0
        for options in rows:
            scores.append(flat[start:start + len(options)])
            start += len(options)
        return scores
    language_model, virtual_tokens = sharing
    split = [[next(n for n, label in enumerate(labels) if label != IGNORE_INDEX) for _, labels in options]
             for options in rows]
    prompts = [options[0][0][:cut[0]] for options, cut in zip(rows, split)]
    replies = [[ids[n:] for (ids, _), n in zip(options, cut)] for options, cut in zip(rows, split)]
    order = sorted(range(len(questions)), key=lambda n: len(prompts[n]))
    per_batch = max(1, batch_size // max(len(options) for options in rows))
    scores: list[list[float]] = [[] for _ in questions]
    was_training = language_model.training
    language_model.eval()
    try:
        for start in range(0, len(order), per_batch):
            chunk = order[start:start + per_batch]
            found = shared_prompt_log_likelihoods(language_model, virtual_tokens, [prompts[n] for n in chunk],
                                                  [replies[n] for n in chunk], pad_id(tokenizer))
            for n, values in zip(chunk, found):
                scores[n] = values
    finally:
        language_model.train(was_training)
    return scores


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_token_ids(tokenizer)[0]


def load_probe(path: str | Path = PROBE_FILE) -> list[dict[str, Any]]:
    """The probe's questions, each checked: a question, two or more distinct options, an answer index."""
    questions = read_records(path)
    for number, record in enumerate(questions, 1):
        options = record.get("options")
        problem = (
            "no question" if not isinstance(record.get("question"), str) or not record["question"].strip()
            else "no category" if not isinstance(record.get("category"), str)
            else "options are not two or more distinct non-empty strings"
            if not isinstance(options, list) or len(options) < 2 or len(set(options)) != len(options)
            or not all(isinstance(o, str) and o.strip() for o in options)
            else "answer is not an index into options"
            if not isinstance(record.get("answer"), int) or not 0 <= record["answer"] < len(options) else None)
        if problem:
            raise DataError(path, f"record {number} ({record.get('id', '?')})", problem)
    return questions


def score_probe(model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]],
                batch_size: int = 32, share_prompt: bool = True) -> dict[str, Any]:
    """Accuracy (%) overall and per category, by summed and by length-normalised option log-likelihood, with the
    chance level; `predictions` holds each question's chosen option. `share_prompt`: see `option_log_likelihoods`."""
    per_question = option_log_likelihoods(model, tokenizer, questions, batch_size, share_prompt)
    results: dict[str, Any] = {"predictions": []}
    tallies: dict[str, list[tuple[bool, bool, float]]] = {}
    for question, option_scores in zip(questions, per_question):
        lengths = [len(option.encode("utf-8")) for option in question["options"]]
        best = max(range(len(option_scores)), key=option_scores.__getitem__)
        best_norm = max(range(len(option_scores)), key=lambda j: option_scores[j] / lengths[j])
        results["predictions"].append({"id": question.get("id"), "choice": best, "choice_norm": best_norm,
                                       "log_likelihoods": option_scores})
        tallies.setdefault(question["category"], []).append(
            (best == question["answer"], best_norm == question["answer"], 1 / len(question["options"])))
    everything = [t for category in tallies.values() for t in category]
    results.update(_accuracy(everything))
    results["categories"] = {category: _accuracy(values) for category, values in tallies.items()}
    return results


def _accuracy(tallies: Sequence[tuple[bool, bool, float]]) -> dict[str, float]:
    n = len(tallies)
    return {"n": n, "accuracy": 100 * sum(t[0] for t in tallies) / n,
            "accuracy_norm": 100 * sum(t[1] for t in tallies) / n, "chance": 100 * sum(t[2] for t in tallies) / n}


def answer_nll(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> float:
    """Mean negative log-likelihood per answer token of the (instruction, answer) pairs, answers as chat replies."""
    rows = [answer_row(tokenizer, instruction, answer) for instruction, answer in pairs]
    scores = row_log_likelihoods(model, rows, pad_id(tokenizer), batch_size)
    tokens = sum(sum(label != IGNORE_INDEX for label in labels) for _, labels in rows)
    return -sum(scores) / tokens


def retention(model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]] | None = None,
              pairs: Sequence[tuple[str, str]] | None = None, batch_size: int = 32) -> dict[str, Any]:
    """The probe's scores (without per-question predictions) and the held-out instructions' answer NLL; by default
    the shipped probe and the held-out seed tasks."""
    probe = score_probe(model, tokenizer, load_probe() if questions is None else questions, batch_size)
    probe.pop("predictions")
    nll = answer_nll(model, tokenizer, heldout_instructions() if pairs is None else pairs, batch_size)
    return {"probe": probe, "heldout_nll": nll}


def load_base(language_model: str | Path, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """(FrozenLanguageModel, tokenizer) of a local Hugging Face directory."""
    from mm_excitor.factory import load_language_model

    model, tokenizer = load_language_model(language_model, dtype)
    return FrozenLanguageModel(model.to(device)), tokenizer


def format_scores(name: str, result: dict[str, Any]) -> str:
    """A Markdown table: accuracy per category (and overall) with the chance level, then the held-out NLL."""
    probe = result["probe"]
    lines = [f"{name}: probe accuracy (%), summed / length-normalised option log-likelihood", "",
             "| category | n | accuracy | accuracy_norm | chance |", "|---|---|---|---|---|"]
    for category, scores in [*probe["categories"].items(), ("all", probe)]:
        lines.append(f"| {category} | {scores['n']} | {scores['accuracy']:.1f} | {scores['accuracy_norm']:.1f} | "
                     f"{scores['chance']:.1f} |")
    lines += ["", f"held-out instruction answer NLL per token: {result['heldout_nll']:.4f}"]
    return "\n".join(lines)


def report(model: Any, tokenizer: Any, source: str, probe_file: Path = PROBE_FILE, batch_size: int = 32,
           out: Path | None = None) -> dict[str, Any]:
    """Score `model` on the probe (every prediction kept) and the held-out instructions, print the table and write
    the result to `out` as JSON if given: what `python -m eval.probe` and `python -m tasks.probe` print."""
    probe = score_probe(model, tokenizer, load_probe(probe_file), batch_size)
    result = {"source": source, "probe_file": str(probe_file), "probe": probe,
              "heldout_nll": answer_nll(model, tokenizer, heldout_instructions(), batch_size)}
    print(format_scores(source, result))
    if out is not None:
        atomic_write_json(out, result)
        print(f"wrote {out}")
    return result


def report_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options of `report` every probe command takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--probe", type=Path, default=PROBE_FILE)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="write the scores and every prediction as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`python -m eval.probe --base LM`: the frozen base language model (a trained run: `python -m tasks.probe`)."""
    parser = report_parser("python -m eval.probe", __doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="a frozen LM (local Hugging Face directory)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    model, tokenizer = load_base(args.base, args.dtype, args.device)
    return report(model, tokenizer, str(args.base), args.probe, args.batch_size, args.out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, sys.argv[1:]))
