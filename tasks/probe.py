"""`python -m tasks.probe TASK --run RUN`: the capability probe and the held-out instructions' answer NLL
(eval.probe) of a trained run's latest adapter, text-only: no dataset is read.

    python -m tasks.probe caption --run runs/compare/shapes-caption/excitor/lr0.02 --out R.json
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.probe import report, report_parser
from mm_excitor.adapter_io import load_adapter
from mm_excitor.cli import run_cli
from mm_excitor.factory import create_model
from mm_excitor.feature_cache import FeatureCache
from tasks import TASKS, get_task
from tasks.run import read_run_config, resolve_checkpoint


def load_text_run(task: str, run: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a trained run's latest adapter, for text-only scoring: no dataset is read."""
    config = read_run_config(get_task(task), run)
    cache = config.data.feature_cache
    model = create_model(config.model, feature_cache=FeatureCache(cache) if cache else None, device=device)
    load_adapter(model, resolve_checkpoint(run))
    return model.eval(), model.tokenizer


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = report_parser("python -m tasks.probe", __doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS), help="the task the run was trained by")
    parser.add_argument("--run", type=Path, required=True, help="a trained run's output_dir or checkpoint")
    args = parser.parse_args(argv)
    model, tokenizer = load_text_run(args.task, args.run, args.device)
    return report(model, tokenizer, str(args.run), args.probe, args.batch_size, args.out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main, sys.argv[1:]))
