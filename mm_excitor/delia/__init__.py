"""DELIA's data stage: general-instruction pools, the model's own answers to them, and a synthetic pool for demos.

See mm_excitor/delia/README.md. Mixing the samples into training is `data/mix.py`, which reads `read_samples`.
"""
from .chat import PLAIN_TEMPLATE, encode_chat_prompt, one_shot_messages
from .pools import POOL_FORMATS, Pool, PoolRecord, load_pool
from .sampling import SamplingConfig, read_samples, sample_answers
from .selfinstruct import PoolGenerationConfig, generate_pool

__all__ = [
    "PLAIN_TEMPLATE", "POOL_FORMATS", "Pool", "PoolGenerationConfig", "PoolRecord", "SamplingConfig",
    "encode_chat_prompt", "generate_pool", "load_pool", "one_shot_messages", "read_samples", "sample_answers",
]
