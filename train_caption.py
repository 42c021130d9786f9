"""Train an Excitor captioner (COCO-style captions), then score it next to its image-blind control.

    python train_caption.py --config configs/coco_llama7b.yaml [key=value ...]
    torchrun --nproc_per_node 8 train_caption.py --config configs/coco_llama7b.yaml
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from data.builders import caption_data
from data.collate import Collator
from data.sampler import ResumableSampler
from eval.caption import evaluate_captioner, format_comparison
from eval.generation import eval_dir
from mm_excitor.cli import run_cli
from mm_excitor.pipeline import build_model
from mm_excitor.recipes import CaptionRunConfig
from mm_excitor.train import Trainer, cleanup_distributed, init_distributed, parse_args, to_dict


def main(argv: Sequence[str] | None = None) -> dict:
    config = parse_args(CaptionRunConfig, argv)
    dist = init_distributed(config.train.device)
    model, image_transform, features = build_model(config.model, config.data.feature_cache, device=dist.device)
    data = caption_data(config.data, image_transform, features)
    tokenizer = model.tokenizer
    collate = Collator(tokenizer, config.data.max_length)
    sampler = ResumableSampler(len(data.train), seed=config.train.seed, rank=dist.rank,
                               world_size=dist.world_size, drop_last=config.train.drop_last)

    def sample_captions(unwrapped) -> list[dict]:
        source = data.eval or data.val
        items = [source[i] for i in range(min(4, len(source)))]
        batch = Collator(tokenizer, config.data.max_length, generate=True)(items)
        visual = {k: batch[k].to(dist.device) for k in ("images", "visual_tokens") if k in batch}
        captions = unwrapped.generate([item["prompt"] for item in items], has_image=batch["has_image"],
                                      max_new_tokens=config.decoding.max_new_tokens, **visual)
        return [{"image_id": item["meta"].get("image_id"), "caption": c} for item, c in zip(items, captions)]

    trainer = Trainer(model, data.train, collate, sampler, config.train, val_dataset=data.val,
                      sample_fn=sample_captions if (data.eval or data.val) else None, run_config=to_dict(config))
    summary = trainer.fit(config.train.resume)
    if config.evaluate and data.eval is not None:
        model.eval()
        table = evaluate_captioner(model, data.eval, data.references, config.decoding,
                                   eval_dir(config.train.output_dir, summary["steps"]), rank=dist.rank, world_size=dist.world_size)
        if table is not None:
            summary["eval"] = table
            print("\nCaption scores on the eval split (CLIP: "
                  f"{'RANDOM-INIT' if not config.model.vision.pretrained else config.model.vision.pretrained}):")
            print(format_comparison(table))
    cleanup_distributed()
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
