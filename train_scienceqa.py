"""Train an Excitor model on ScienceQA (QCM-A by default), then score the test split with the official breakdown,
with the images and without them (the image-blind control).

    python train_scienceqa.py --config configs/scienceqa_llama7b.yaml [key=value ...]
    torchrun --nproc_per_node 8 train_scienceqa.py --config configs/scienceqa_llama7b.yaml
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from data.builders import scienceqa_data
from data.collate import Collator
from data.datasets import ImageBlind
from data.sampler import ResumableSampler
from eval.generation import eval_dir
from eval.scienceqa import evaluate_answerer
from mm_excitor.cli import run_cli
from mm_excitor.pipeline import build_model
from mm_excitor.recipes import ScienceQARunConfig
from mm_excitor.train import Trainer, cleanup_distributed, init_distributed, parse_args, to_dict


def main(argv: Sequence[str] | None = None) -> dict:
    config = parse_args(ScienceQARunConfig, argv)
    dist = init_distributed(config.train.device)
    model, image_transform, features = build_model(config.model, config.data.feature_cache, device=dist.device)
    data = scienceqa_data(config.data, image_transform, features)
    sampler = ResumableSampler(len(data.train), seed=config.train.seed, rank=dist.rank,
                               world_size=dist.world_size, drop_last=config.train.drop_last)
    trainer = Trainer(model, data.train, Collator(model.tokenizer, config.data.max_length), sampler, config.train,
                      val_dataset=data.val, run_config=to_dict(config))
    summary = trainer.fit(config.train.resume)
    if config.evaluate and data.eval is not None:
        model.eval()
        # with the images, and with them removed: the IMG column shows what the image adds
        for run, dataset in (("image", data.eval), ("blind", ImageBlind(data.eval))):
            scores = evaluate_answerer(model, dataset, Path(config.data.root) / "problems.json", config.decoding,
                                       eval_dir(config.train.output_dir, summary["steps"]) / run, split=config.data.eval_split,
                                       rank=dist.rank, world_size=dist.world_size, source_images=run == "image")
            if scores is not None:
                summary.setdefault("eval", {})[run] = {name: acc.percent for name, acc in scores.categories.items()}
    cleanup_distributed()
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
