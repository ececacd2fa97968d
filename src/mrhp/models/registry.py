"""The model registry: every system of the paper's comparison (Tables 3-4), built by name from a `ModelConfig`.

`mrhp` is the paper's model (`mrhp.models.paper.HelpfulnessModel`); the others are the baselines of `mrhp.models.baselines`
(SPEC 8). Every model maps a `Batch` to a `ModelOutput` (`scores [B, R]`, `row_scores [N]`), so training,
checkpoints, evaluation and prediction are the same for all of them. Only the paper's model returns the pooled
vectors of its contrastive loss; the baselines train with the pairwise hinge loss alone (eq. 34).
"""

from __future__ import annotations

from torch import Tensor, nn

from mrhp.config import MODEL_NAMES, ModelConfig
from mrhp.models.baselines import EGCNN, MCR, BiMPM, ConvKNRM, DRNet, PRHNet, SSECross
from mrhp.models.paper import HelpfulnessModel

MODELS: dict[str, type[nn.Module]] = {
    "mrhp": HelpfulnessModel,
    "mcr": MCR,
    "conv-knrm": ConvKNRM,
    "prh-net": PRHNet,
    "bimpm": BiMPM,
    "eg-cnn": EGCNN,
    "sse-cross": SSECross,
    "dr-net": DRNet,
}
TEXT_ONLY = frozenset({"conv-knrm", "prh-net", "bimpm", "eg-cnn"})
"""Models that never read an image: they ignore the region inputs by construction."""
EXPLAINED = frozenset({"mrhp"})
"""Models whose scores split exactly into fusion paths, words and regions (`forward(batch, explain=True)`)."""

assert tuple(MODELS) == MODEL_NAMES, "mrhp.config.MODEL_NAMES and the registry must list the same models"

__all__ = ["EXPLAINED", "MODEL_NAMES", "MODELS", "TEXT_ONLY", "build_model", "explains", "initialise_from_data",
           "reads_images"]


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of kind `config.name` (one of `MODEL_NAMES`)."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return MODELS[config.name](config)


def initialise_from_data(model: nn.Module, vectors: Tensor | None) -> None:
    """What a new model takes from the prepared dataset and the packages before training: its word vectors [V, E]
    (every model, when the dataset has them), and for the paper's model with a pretrained text encoder the weights
    of the top layers it fine-tunes."""
    if vectors is not None:
        model.load_word_vectors(vectors)
    if isinstance(model, HelpfulnessModel):
        model.load_pretrained_text()


def reads_images(config: ModelConfig) -> bool:
    """Whether a model built from `config` looks at image regions at all."""
    return config.use_images and config.image_dim > 0 and config.name not in TEXT_ONLY


def explains(config: ModelConfig) -> bool:
    """Whether a model built from `config` can explain its scores (`mrhp.models.paper.Explanation`)."""
    return config.name in EXPLAINED
