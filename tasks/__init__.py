"""The benchmarks, one Task each (see tasks/base.py): wiring between `data`, `eval` and `mm_excitor`."""
from __future__ import annotations

from tasks.base import Task
from tasks.caption import CaptionTask
from tasks.instruct import InstructTask
from tasks.scienceqa import ScienceQATask
from tasks.shapes_json import ShapesJsonTask

TASKS: dict[str, Task] = {task.name: task for task in (CaptionTask(), ScienceQATask(), ShapesJsonTask(),
                                                      InstructTask())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; one of {', '.join(sorted(TASKS))}")
    return TASKS[name]
