"""The one place for prompt templates: captioning and the ScienceQA formats of the official generator.

Convention for every task: ``prompt`` is the text the model is given (also at generation time) and ``target``
starts with the separator that follows the prompt in running text, so ``prompt + target`` is exactly the text
of the official format (e.g. ``"...\\nAnswer:" + " The answer is A."``). The loss covers the target tokens only.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

CAPTION_PROMPT = "Describe the image in one sentence.\nCaption:"
CAPTION_TARGET = " {caption}"


@dataclass(frozen=True)
class CaptionTemplate:
    """Prompt and target template for captioning; the target template must contain ``{caption}``."""

    prompt: str = CAPTION_PROMPT
    target: str = CAPTION_TARGET

    def __post_init__(self) -> None:
        if "{caption}" not in self.target:
            raise ValueError(f"caption target template {self.target!r} lacks '{{caption}}'")


def caption_example(caption: str, template: CaptionTemplate = CaptionTemplate()) -> tuple[str, str]:
    """(prompt, target) for one training caption."""
    return template.prompt, template.target.format(caption=caption)


# ScienceQA, after lupantech/ScienceQA models/base_prompt.py (create_one_example), without captions; plus
# QCM-option (not an official format): the same prompt answered by the option's own text, which is what the
# multiple-choice likelihood protocol (eval.scienceqa_likelihood) scores instead of a letter.
SCIENCEQA_FORMATS = ("QCM-A", "CQM-A", "QCM-LEA", "QCM-option")
OPTION_LETTERS = string.ascii_uppercase


def format_choices(choices: Sequence[str]) -> str:
    """``"(A) first (B) second"`` as in the official generator."""
    if len(choices) > len(OPTION_LETTERS):
        raise ValueError(f"{len(choices)} choices: more than {len(OPTION_LETTERS)} option letters")
    return " ".join(f"({OPTION_LETTERS[i]}) {c}" for i, c in enumerate(choices))


def scienceqa_example(
    question: str,
    hint: str,
    choices: Sequence[str],
    answer: int,
    lecture: str = "",
    solution: str = "",
    fmt: str = "QCM-A",
) -> tuple[str, str]:
    """(prompt, target) for one ScienceQA problem in format ``fmt`` (one of SCIENCEQA_FORMATS).

    Follows the official generator exactly: an empty hint becomes ``"N/A"``; newlines in the lecture and solution
    become a literal ``\\n`` (as the generator does, and as LLaVA trained on); double spaces are collapsed.
    """
    if fmt not in SCIENCEQA_FORMATS:
        raise ValueError(f"unknown ScienceQA prompt format {fmt!r}; choose one of {', '.join(SCIENCEQA_FORMATS)}")
    if not 0 <= answer < len(choices):
        raise ValueError(f"answer index {answer} out of range for {len(choices)} choices")
    input_format, output_format = fmt.split("-")
    context = hint.strip() or "N/A"
    options = format_choices(choices)
    if input_format == "QCM":
        text_in = f"Question: {question}\nContext: {context}\nOptions: {options}\n"
    else:  # CQM
        text_in = f"Context: {context}\nQuestion: {question}\nOptions: {options}\n"
    letter = OPTION_LETTERS[answer]
    if output_format == "option":
        text_out = f"Answer: {choices[answer]}"
    elif output_format == "A":
        text_out = f"Answer: The answer is {letter}."
    else:  # LEA
        lec = lecture.replace("\n", "\\n")
        sol = solution.replace("\n", "\\n")
        text_out = f"Answer: {lec} {sol} The answer is {letter}."
    prompt = _official_cleanup(text_in + "Answer:")
    full = _official_cleanup(text_in + text_out)
    # The cleanup never crosses the "Answer:" boundary, so the prompt is a prefix of the full text.
    assert full.startswith(prompt), (prompt, full)
    return prompt, full[len(prompt):]


def _official_cleanup(text: str) -> str:
    """The generator's final step: ``text.replace("  ", " ").strip()``."""
    return text.replace("  ", " ").strip()


# Instruction items: a general instruction (DELIA's self-sampled answers, data.mix) and the format-following task
# over the shapes images (tasks.shapes_json) share one frame. "\nAnswer:" is the cue the ScienceQA formats already
# end with, so a text-only general item and a multimodal task item teach the same prompt -> answer frame and the
# same answer-only loss; the chat template is not used because no task prompt uses it (a mix of two frames would
# teach the frame, not the answers).
INSTRUCTION_PROMPT = "{instruction}\nAnswer:"
INSTRUCTION_TARGET = " {answer}"


def instruction_example(instruction: str, answer: str) -> tuple[str, str]:
    """(prompt, target) for one instruction and its answer; either may span several lines."""
    return INSTRUCTION_PROMPT.format(instruction=instruction.strip()), INSTRUCTION_TARGET.format(answer=answer.strip())
