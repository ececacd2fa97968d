"""The model registry: every system of the paper's comparison (Tables 3-4), built by name from a `ModelConfig`.

`mrhp` is the paper's model (`mrhp.models.paper.HelpfulnessModel`); the others are the baselines of `mrhp.models.baselines`
(SPEC 8). Every model maps a `Batch` to a `ModelOutput` (`scores [B, R]`, `row_scores [N]`), so training,
checkpoints, evaluation and prediction are the same for all of them. Only the paper's model returns the pooled
vectors of its contrastive loss; the baselines train with the pairwise hinge loss alone (eq. 34).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mrhp.config import MODEL_NAMES, ModelConfig, ModelInputs
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


@dataclass(frozen=True)
class Capabilities:
    """What a kind of model does with its inputs, declared once here; everything that needs to know asks
    `capabilities` (or `reads_images` / `explains` / `reads_text_states` for a config) instead of testing names.

    images: it has an image side (it reads regions when the config gives it images).
    product: its score depends on the product, not on the review alone.
    explains: its scores split exactly into fusion paths, words and regions (`forward(batch, explain=True)`).
    text_states: it can read a pretrained text encoder's token states (`model.text_encoder`) instead of words.
    """

    images: bool = True
    product: bool = True
    explains: bool = False
    text_states: bool = False


CAPABILITIES: dict[str, Capabilities] = {
    "mrhp": Capabilities(explains=True, text_states=True),
    "mcr": Capabilities(),
    "conv-knrm": Capabilities(images=False),
    "prh-net": Capabilities(images=False),
    "bimpm": Capabilities(images=False),
    "eg-cnn": Capabilities(images=False, product=False),  # its paper ranks the reviews of one product
    "sse-cross": Capabilities(),
    "dr-net": Capabilities(),
}
TEXT_ONLY = frozenset(name for name, c in CAPABILITIES.items() if not c.images)
"""Models that never read an image: they ignore the region inputs by construction."""
EXPLAINED = frozenset(name for name, c in CAPABILITIES.items() if c.explains)
"""Models whose scores split exactly into fusion paths, words and regions (`forward(batch, explain=True)`)."""

assert tuple(MODELS) == MODEL_NAMES == tuple(CAPABILITIES), "mrhp.config.MODEL_NAMES and the registry must list the same models"

__all__ = ["CAPABILITIES", "EXPLAINED", "MODEL_NAMES", "MODELS", "TEXT_ONLY", "Capabilities", "build_model",
           "capabilities", "explains", "initialise_from_data", "reads_images", "reads_text_states"]


def build_model(config: ModelConfig, inputs: ModelInputs) -> nn.Module:
    """A freshly initialised model of kind `config.name` (one of `MODEL_NAMES`) for the data `inputs` describes."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return MODELS[config.name](config, inputs)


def initialise_from_data(model: nn.Module, vectors: Tensor | None) -> None:
    """What a new model takes from the prepared dataset and the packages before training: its word vectors [V, E]
    (every model, when the dataset has them), and for the paper's model with a pretrained text encoder the weights
    of the top layers it fine-tunes."""
    if vectors is not None:
        model.load_word_vectors(vectors)
    if isinstance(model, HelpfulnessModel):
        model.load_pretrained_text()


def capabilities(name: str) -> Capabilities:
    """What the model `name` (one of `MODEL_NAMES`) does with its inputs."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return CAPABILITIES[name]


def reads_images(config: ModelConfig, inputs: ModelInputs) -> bool:
    """Whether a model built from `config` for `inputs` looks at image regions at all."""
    return config.use_images and inputs.image_dim > 0 and capabilities(config.name).images


def explains(config: ModelConfig) -> bool:
    """Whether a model built from `config` can explain its scores (`mrhp.models.paper.Explanation`)."""
    return capabilities(config.name).explains


def reads_text_states(config: ModelConfig) -> bool:
    """Whether a model built from `config` reads a pretrained encoder's token states rather than word ids."""
    return config.text_encoder != "lstm" and capabilities(config.name).text_states
