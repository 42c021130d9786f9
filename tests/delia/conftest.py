"""Fixtures for the DELIA tests: a tiny random LLaMA (session-wide, never trained) and a tokenizer without a chat
template."""
from __future__ import annotations

import pytest

from tests.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture
def plain_tokenizer():
    return tiny_tokenizer()
