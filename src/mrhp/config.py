"""Run configuration: frozen dataclasses with the defaults in code.

A config file (TOML or JSON) holds only overrides, as tables named after the sections below::

    [model]
    interaction_layers = 5
    [train]
    lr = 1e-4

and `--set section.key=value` overrides on the command line are applied after the file. The resolved config is
saved as JSON with every run and inside every checkpoint. Only the top-level model and the trainer read it;
sub-modules take plain arguments.

A file may also hold a `[prepare]` table: options of `mrhp prepare` (its long option names with `_` for `-`, e.g.
`format = "amazon2023"`, `drop_single_level = true`, `split_fractions = [0.6, 0.2, 0.2]`), read by
`mrhp prepare --config FILE` under the options given on its command line, so that one file reproduces a dataset
and a run. Training ignores that table (`prepare_section` returns it).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrhp import jsontext
from mrhp.compute.devices import DEVICE_FORMS, PRECISIONS, is_device_name
from mrhp.errors import MrhpError
from mrhp.objectives.losses import REDUCTIONS, WEIGHTINGS
from mrhp.objectives.metrics import METRICS, TIES

# Threads and loader processes beyond any machine; seeds as numpy's generators take them.
MAX_THREADS = 4096
MAX_SEED = 2**32 - 1

# The paper's model and the baselines of its Tables 3-4 (SPEC 8); `mrhp.models.registry` builds each by name.
MODEL_NAMES = ("mrhp", "mcr", "conv-knrm", "prh-net", "bimpm", "eg-cnn", "sse-cross", "dr-net")


# How the lists of several training sources are drawn into an epoch (data.source_sampling; see
# mrhp.data.batching.mixed_training_batches): "products" = every list of every source once per epoch, so a source
# weighs as much as its size; "balanced" = the same number of lists, an equal share from each source.
SOURCE_SAMPLING = ("products", "balanced")


@dataclass(frozen=True)
class DataConfig:
    """Which prepared datasets train one model, and how lists of reviews are cut into batches (SPEC 3.5, 4:
    batches of products with their reviews)."""

    # The prepared datasets trained on together (`mrhp train --data A --data B` replaces the list); each must be
    # prepared with the first one's vocabulary and text encoder (`mrhp prepare --vocabulary-from`). Relative
    # paths are read from the working directory.
    paths: tuple[str, ...] = ()
    source_sampling: str = "products"  # SOURCE_SAMPLING: how several sources share an epoch

    max_tokens: int = 128  # texts are cut at this many tokens (SPEC 3.1)
    max_regions: int = 128  # image regions kept per item (SPEC 2.1)
    batch_rows: int = 32  # product-review rows per training step (paper 4.2)
    max_list_size: int = 16  # a product with more reviews is split into random lists of at most this many
    eval_batch_rows: int = 128


@dataclass(frozen=True)
class ModelConfig:
    """The paper's model (SPEC 3), or by `name` a baseline (SPEC 8, `mrhp.models.registry`; the shared sizes apply to all).
    What the prepared dataset decides (vocabulary size, feature widths) is not here but in `ModelInputs`."""

    name: str = "mrhp"  # which model: the paper's ("mrhp") or a baseline of MODEL_NAMES (`mrhp train --model`)
    hidden_size: int = 128  # d
    embedding_dim: int = 300  # word embedding width when the dataset has no word vectors (else theirs)
    num_heads: int = 4  # 1 head: eq. 8 plus projection biases and an output projection
    interaction_layers: int = 5  # D
    image_encoder_layers: int = 1
    feedforward_size: int = 256  # inside every self-attention block
    conv_kernel: int = 3  # intra-modal fusion CNN (eq. 17)
    dropout: float = 0.1
    use_interaction: bool = True  # Table 6 ablation "w/o cross-modal module" when False
    use_images: bool = True  # False ignores every image (text-only ablation)
    checkpoint_activations: bool = True  # recompute attention layers in backward: same result, far less memory
    # Not in the paper (off reproduces it): a pretrained transformer's token states instead of LSTM(W_emb(T)) (one
    # of mrhp.features.text_encoder.TEXT_ENCODERS, its states stored by `mrhp prepare --text-encoder`), with its top
    # `text_tuned_layers` layers trained; and a side channel of review length and rating into the score.
    text_encoder: str = "lstm"
    text_tuned_layers: int = 0
    # The variant of the pretrained encoder that makes the token states (mrhp.features.text_encoder.TEXT_PRECISIONS):
    # "fp32", or "int8" (quantized; faster on a CPU). One variant throughout: prepare stores it with the states,
    # train and evaluate refuse a dataset made by the other, and predict and the service run the same one.
    text_encoder_precision: str = "fp32"
    side_features: bool = False
    # Not in the paper either: stored side features (mrhp.data.side.STORED_SIDE_FEATURES, computed by `mrhp prepare`)
    # fed to the same side channel, as comma-separated names, e.g. "age,verified"; "" = none. "age_rank"/"age"
    # predict votes (older reviews collected them for longer), so leave them out to rank by quality.
    extra_side_features: str = ""
    side_hidden_size: int = 16
    # Not in the paper (0 reproduces it): every review's score starts at `length_anchor` * log(1 + words), so an
    # untrained model already ranks as the length floor does and training learns what to add to that.
    length_anchor: float = 0.0


# Settings of `ModelConfig` before `ModelInputs` held them (a checkpoint written then has them in its config).
INPUT_SETTINGS = ("vocab_size", "image_dim", "text_state_dim")


@dataclass(frozen=True)
class ModelInputs:
    """What a model is built for that the prepared dataset decides, not the user (`mrhp.training.loop.model_inputs`
    reads it from the dataset); saved in every checkpoint beside the config, from which the model is rebuilt."""

    vocab_size: int  # words of the dataset's vocabulary, padding and <unk> included
    image_dim: int  # region feature width F (0: the dataset has no images)
    embedding_dim: int  # word embedding width: the dataset's word vectors', else `model.embedding_dim`
    text_state_dim: int = 0  # width of the stored token states of a pretrained `model.text_encoder`, else 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: object, source: str) -> ModelInputs:
        """Rebuild saved inputs; errors name `source`."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(values, dict) or set(values) - set(names):
            raise MrhpError(f"{source}: expected an object with {', '.join(names)}, got {str(values)[:80]}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MrhpError(f"{source}: {name} must be an integer >= 0, got {value!r}")
        try:
            return cls(**values)
        except TypeError:
            raise MrhpError(f"{source}: expected an object with {', '.join(names)}") from None


@dataclass(frozen=True)
class LossConfig:
    """Ranking loss (eq. 34) plus weighted cross-modal contrastive loss (eqs. 30-33), joined by eq. 35."""

    margin: float = 1.0  # beta
    label_gap_margin: bool = False  # the reference code's margin = label gap
    min_gap: int = 1  # pairs need y+ - y- >= min_gap (SPEC 2.2)
    ranking_reduction: str = "mean"
    contrastive_weight: float = 1.0  # 0 = Table 6 "w/o contrastive objective"
    weighting: str = "adaptive"  # "none" = Table 6 "w/o adaptive weighting" (eq. 32); "circle" = authors' code
    o_p: float = 2.0
    o_n: float = 0.0
    detach_weights: bool = False
    contrastive_reduction: str = "mean"
    helpful_level: int = 2  # rows with label >= this take part in the contrastive loss
    circle_margin: float = 0.25
    circle_scale: float = 256.0
    # Not in the paper (its Limitation 2; 0 reproduces it): weight of the set-level contrastive loss, eq. 33 over
    # sets of reviews and of product information (mrhp.objectives.losses.set_contrastive_loss), added to eq. 35.
    set_contrastive_weight: float = 0.0
    # Not in the paper (0 reproduces it): weight of ListNet's listwise loss (eq. L1,
    # mrhp.objectives.losses.listwise_softmax_loss) added to eq. 35, and the temperature of its target.
    listwise_weight: float = 0.0
    listwise_temperature: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    lr_factor: float = 0.5  # ReduceLROnPlateau on the dev metric
    lr_patience: int = 4
    early_stopping_patience: int = 8  # epochs without dev improvement
    select_metric: str = "map"  # model selection and early stopping on dev, never on test
    ties: str = "pessimistic"
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    device: str = "auto"  # mrhp.compute.devices.DEVICE_FORMS: auto = the GPU when CUDA is usable, else the CPU
    precision: str = "fp32"  # mrhp.compute.devices.PRECISIONS: bf16 / fp16 autocast (fp16 with a gradient scaler)
    loader_workers: int = 0  # processes assembling batches (mrhp.data.loader); 0 = in the training process


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        _check(self.train.ties in TIES, f"train.ties must be one of {TIES}")
        _check(self.data.source_sampling in SOURCE_SAMPLING, f"data.source_sampling must be one of {SOURCE_SAMPLING}")
        _check(self.train.select_metric in METRICS, f"train.select_metric must be one of {METRICS}")
        _check(self.loss.weighting in WEIGHTINGS, f"loss.weighting must be one of {WEIGHTINGS}")
        _check(self.loss.ranking_reduction in REDUCTIONS, f"loss.ranking_reduction must be one of {REDUCTIONS}")
        _check(self.loss.contrastive_reduction in REDUCTIONS, f"loss.contrastive_reduction must be one of {REDUCTIONS}")
        _check(is_device_name(self.train.device), f"train.device must be one of {DEVICE_FORMS}, got {self.train.device!r}")
        _check(self.train.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
        _check(self.model.name in MODEL_NAMES, f"model.name must be one of {MODEL_NAMES}, got {self.model.name!r}")
        _check(self.model.length_anchor == 0 or self.model.name == "mrhp",
               f"model.length_anchor is a setting of the paper's model (mrhp), not of {self.model.name!r}")
        for name, (value, low, high) in self._ranges().items():
            # NaN fails every comparison, so it is out of any range; inf is refused explicitly.
            ok = low <= value <= high and (not isinstance(value, float) or math.isfinite(value))
            _check(ok, f"{name} must be a finite number within [{low}, {high}], got {value}")
        _check(self.model.hidden_size % self.model.num_heads == 0, "model.hidden_size must be divisible by model.num_heads")
        # An even kernel would shift the convolution's output by one position against the padding mask.
        _check(self.model.conv_kernel % 2 == 1, f"model.conv_kernel must be odd, got {self.model.conv_kernel}")
        _check(self.model.dropout < 1.0, f"model.dropout must be below 1 (1 drops everything), got {self.model.dropout}")
        _check(self.train.lr > 0, f"train.lr must be > 0, got {self.train.lr}")
        from mrhp.features.text_encoder import (  # here: the encoders' module imports torch
            TEXT_ENCODERS,
            TEXT_PRECISIONS,
        )

        _check(self.model.text_encoder in TEXT_ENCODERS, f"model.text_encoder must be one of {TEXT_ENCODERS}")
        _check(self.model.text_tuned_layers >= 0, "model.text_tuned_layers must be >= 0")
        _check(self.model.text_encoder_precision in TEXT_PRECISIONS,
               f"model.text_encoder_precision must be one of {TEXT_PRECISIONS}")
        _check(self.model.text_encoder != "lstm" or self.model.text_tuned_layers == 0,
               "model.text_tuned_layers is for a pretrained model.text_encoder")
        from mrhp.data.side import STORED_SIDE_FEATURES, parse_side_names

        try:
            parse_side_names(self.model.extra_side_features)
        except ValueError as exc:
            raise MrhpError(f"invalid config: model.extra_side_features: {exc} (names: "
                            f"{', '.join(STORED_SIDE_FEATURES)})") from None
        return self


    def _ranges(self) -> dict[str, tuple[float, float, float]]:
        """Every numeric setting with its allowed closed range (value, low, high)."""
        big = math.inf
        limits = {
            "data": {"max_tokens": 1, "max_regions": 1, "batch_rows": 1, "max_list_size": 2, "eval_batch_rows": 1},
            # Upper bounds far above any useful model, so that a typo fails here rather than exhausting memory.
            "model": {"hidden_size": (1, 8192), "embedding_dim": (1, 8192), "num_heads": (1, 8192),
                      "interaction_layers": (1, 64), "image_encoder_layers": (0, 64), "feedforward_size": (1, 65536),
                      "conv_kernel": (1, 63), "dropout": (0.0, 1.0), "text_tuned_layers": 0,
                      "side_hidden_size": (1, 8192), "length_anchor": (-100.0, 100.0)},
            "loss": {"margin": 0.0, "min_gap": 1, "contrastive_weight": 0.0, "helpful_level": 0,
                     "circle_margin": 0.0, "circle_scale": 0.0, "o_p": (-big, big), "o_n": (-big, big),
                     "set_contrastive_weight": 0.0, "listwise_weight": 0.0, "listwise_temperature": (1e-3, 1e3)},
            "train": {"epochs": 1, "lr": 0.0, "weight_decay": 0.0, "grad_clip": 0.0, "lr_factor": (0.0, 1.0),
                      "lr_patience": 0, "early_stopping_patience": 0, "threads": (0, MAX_THREADS),
                      "loader_workers": (0, MAX_THREADS), "seed": (0, MAX_SEED)},
        }
        return {f"{section}.{key}": (getattr(getattr(self, section), key), *(bound if isinstance(bound, tuple)
                                                                              else (bound, big)))
                for section, keys in limits.items() for key, bound in keys.items()}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MrhpError(f"invalid config: {message}")


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """Check a TOML/JSON value (or convert a `--set` string, comma-separated for a list) against a field's
    annotated type."""
    if annotation == "tuple[str, ...]":
        items = [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
            raise MrhpError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(items)
    kind = {"int": int, "float": float, "bool": bool, "str": str}[annotation]
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text in ("true", "1", "yes")
            return kind(text)
        except ValueError:
            raise MrhpError(f"{where}: expected {annotation}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool) or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MrhpError(f"{where}: expected {annotation}, got {value!r}")
    return value


def apply_overrides(config: Config, overrides: dict[str, Any], source: str) -> Config:
    """Return `config` with `{section: {key: value}}` applied; unknown sections or keys are errors."""
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for section, values in overrides.items():
        if section not in sections:
            raise MrhpError(f"{source}: unknown config section '{section}' (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise MrhpError(f"{source}: '{section}' must be a table of settings")
        current = sections[section]
        hints = {f.name: f.type for f in dataclasses.fields(current)}
        changes = {}
        for key, value in values.items():
            if key not in hints:
                raise MrhpError(f"{source}: unknown setting '{section}.{key}' (known: {', '.join(hints)})")
            changes[key] = _coerce(value, hints[key], f"{source}: {section}.{key}")
        sections[section] = dataclasses.replace(current, **changes)
    return Config(**sections)


def parse_set(items: typing.Sequence[str]) -> dict[str, dict[str, str]]:
    """Parse `section.key=value` strings from the command line."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise MrhpError(f"--set {item!r}: expected section.key=value, e.g. train.lr=0.001")
        out.setdefault(section, {})[key] = value
    return out


# The table of a config file that holds `mrhp prepare` options rather than settings of the run.
PREPARE_SECTION = "prepare"


def _read_file(path: Path) -> dict[str, Any]:
    """The tables of a TOML or JSON config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MrhpError(f"cannot read config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise MrhpError(f"{path}: the config file is not UTF-8 text ({error.reason} at byte {error.start})") from None
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        tables = jsontext.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise MrhpError(f"{path}: not valid {kind}: {error}") from None
    except RecursionError:
        raise MrhpError(f"{path}: the config file nests tables or arrays too deeply to read") from None
    if not isinstance(tables, dict):
        raise MrhpError(f"{path}: the config file holds a {type(tables).__name__}, expected a {kind} object of "
                        "sections ({\"train\": {\"lr\": 0.001}})")
    return tables


def prepare_section(path: Path) -> dict[str, Any]:
    """The `[prepare]` table of a config file (`mrhp prepare` options), empty when it has none."""
    path = Path(path)
    section = _read_file(path).get(PREPARE_SECTION, {})
    if not isinstance(section, dict):
        raise MrhpError(f"{path}: '{PREPARE_SECTION}' must be a table of options")
    return section


def load_config(path: Path | None = None, sets: typing.Sequence[str] = (), base: Config | None = None) -> Config:
    """`base` (default: the defaults in code), then the overrides of `path` (TOML or JSON; its `[prepare]` table
    is `mrhp prepare`'s, not the run's), then `--set` items."""
    config = base or Config()
    if path is not None:
        path = Path(path)
        overrides = {name: table for name, table in _read_file(path).items() if name != PREPARE_SECTION}
        config = apply_overrides(config, overrides, str(path))
    config = apply_overrides(config, parse_set(sets), "--set")
    return config.validate()


def config_from_dict(values: dict[str, Any], source: str = "checkpoint") -> Config:
    """Rebuild a resolved config saved by `Config.to_dict`; errors name `source`."""
    config = apply_overrides(Config(), values, source)
    try:
        return config.validate()
    except MrhpError as error:
        raise MrhpError(f"{source}: {error}") from None
