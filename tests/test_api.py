"""The one request parser (`mrhp.inference.Ranker.parse`) on a tiny untrained model: what it reads from a request
line and the errors that name the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mrhp.checkpoint import Checkpoint
from mrhp.config import Config, ModelConfig
from mrhp.data.text import Vocabulary
from mrhp.errors import DataError
from mrhp.inference import Ranker, RequestError
from mrhp.models import build_model

F = 6  # region feature size of the model


@pytest.fixture(scope="module")
def ranker() -> Ranker:
    torch.manual_seed(0)
    config = Config(model=ModelConfig(hidden_size=8, embedding_dim=6, num_heads=2, interaction_layers=1,
                                      feedforward_size=8, vocab_size=4, image_dim=F)).validate()
    return Ranker(Checkpoint(model=build_model(config.model), config=config,
                             vocab=Vocabulary(["<pad>", "<unk>", "pot", "steel"]), relevance_threshold=1))


def test_parse_a_request_line(ranker: Ranker, tmp_path: Path):
    (tmp_path / "feat").mkdir()
    np.save(tmp_path / "feat" / "A0.npy", np.ones((49, F), dtype=np.float32))
    np.save(tmp_path / "feat" / "a1.npy", np.ones((7, F), dtype=np.float16))
    np.save(tmp_path / "feat" / "wide.npy", np.ones((2, F + 1), dtype=np.float32))
    line = {"product_id": "A", "name": "Pot", "description": "steel", "images": ["feat/A0.npy"],
            "reviews": [{"review_id": "x", "text": "good", "images": ["feat/a1.npy"]}, {"review_id": 2, "text": ""}]}
    parsed = ranker.parse(line, where="input.jsonl line 3", base_dir=tmp_path)
    assert parsed.product_id == "A" and parsed.review_ids == ["x", "2"]
    assert len(parsed.ranking.product.tokens) == 2  # "Pot steel"
    shapes = [item.regions.shape for item in (parsed.ranking.product, *parsed.ranking.reviews)]
    assert shapes == [(49, F), (7, F), (0, F)]
    assert all(item.regions.dtype == np.float32 for item in parsed.ranking.reviews)

    def error_of(request: dict) -> str:
        with pytest.raises(DataError) as error:
            ranker.parse(request, where="input.jsonl line 3", base_dir=tmp_path)
        return str(error.value)

    missing = {**line, "reviews": [{"review_id": "x", "text": "", "images": ["feat/none.npy"]}]}
    assert error_of(missing).startswith("input.jsonl line 3, field 'reviews[0].images[0]': feature file not found")
    wide = {**line, "images": ["feat/wide.npy"]}
    assert error_of(wide) == "input.jsonl line 3, field 'images[0]': region feature size 7, the model takes 6"
    assert error_of({"text": "x"}) == "input.jsonl line 3, field 'reviews': missing required field"
    with pytest.raises(RequestError, match="field 'images\\[0\\]': expected an image"):
        ranker.parse({**line, "reviews": []})  # no base folder (the service): file paths are refused
