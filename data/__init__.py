"""Dataset code for mm-excitor: COCO captions, ScienceQA, prompts, tokenisation, batching, sampling.

Submodules are imported explicitly (``from data.coco import ...``) so that importing ``data`` stays cheap
and does not pull torch into processes that only need a reader. See ``data/README.md``.
"""
