"""Embeddings: redaction, head+tail truncation, dedup and the cache (with the real MiniLM)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from predictor.config import EmbeddingConfig
from predictor.contacts.redact import redact
from predictor.features.embed import SEPARATOR, Embedder, EmbeddingCache


@pytest.mark.parametrize(
    ("text", "placeholder", "secret"),
    [
        ("mail me at jane.doe42@example.com please", "[EMAIL]", "jane.doe42@example.com"),
        ("call +44 7700 900123 after six", "[PHONE]", "7700 900123"),
        ("card 4111 1111 1111 1111 was charged", "[CARD]", "4111 1111 1111 1111"),
        ("account 12345678 is mine", "[NUMBER]", "12345678"),
        # Found by a hostile client: cards in dotted or spaced groups, IBANs, national ids, spelled addresses.
        ("card 4111.1111.1111.1111 ok", "[CARD]", "1111.1111"),
        ("card 4111  1111  1111  1111 ok", "[CARD]", "1111  1111"),
        ("iban DE89 3704 0044 0532 0130 00 thanks", "[IBAN]", "3704 0044"),
        ("iban GB82WEST12345698765432 ok", "[IBAN]", "GB82WEST"),
        ("ssn 123-45-6789 ok", "[NATIONAL_ID]", "45-6789"),
        ("NI QQ 12 34 56 C ok", "[NATIONAL_ID]", "34 56"),
        ("dni 12345678Z ok", "[NATIONAL_ID]", "12345678Z"),
        ("nie X1234567L ok", "[NATIONAL_ID]", "1234567"),
        ("cf RSSMRA85T10A562S ok", "[NATIONAL_ID]", "RSSMRA85"),
        ("personnummer 850709-9805 ok", "[NATIONAL_ID]", "9805"),
        ("write to jane dot doe at example dot com", "[EMAIL]", "doe"),
        ("write to jane.doe at example.com", "[EMAIL]", "jane.doe"),
        ("write to jane.doe (at) example (dot) com", "[EMAIL]", "jane.doe"),
        ("write to JANE [AT] EXAMPLE [DOT] CO [DOT] UK", "[EMAIL]", "JANE"),
        # National numbers with a trunk prefix, as written in Belarus, Russia and Serbia (#19).
        ("тел. 8 (029) 123-45-67, звоните", "[PHONE]", "123-45-67"),
        ("Мой номер +375 29 123-45-67", "[PHONE]", "123-45-67"),
        ("звоните 8 912 345 67 89 вечером", "[PHONE]", "345 67 89"),
        ("Номер +7 (912) 345-67-89", "[PHONE]", "345-67-89"),
        ("pozovite 064/123-4567 posle pet", "[PHONE]", "123-4567"),
        ("мој број 064 123 45 67", "[PHONE]", "123 45 67"),
        ("moj broj je +381 64 123 4567", "[PHONE]", "123 4567"),
        ("перезвоните на 123-45-67 вечером", "[PHONE]", "123-45-67"),
        # Local ids, cards and accounts (#19): each language's shapes as its customers write them.
        ("Нумар майго рахунку 3140285A001PB4, калі", "[NATIONAL_ID]", "3140285"),
        ("рахунак BY13 NBRB 3600 9000 0000 2Z00 AB00 дзякуй", "[IBAN]", "NBRB 3600"),
        ("картка 9112 3456 7890 1234 не праходзіць", "[CARD]", "3456 7890"),
        ("СНИЛС 112-233-445 95, паспорт", "[NATIONAL_ID]", "233-445"),
        ("паспорт 45 08 123456 выдан", "[NATIONAL_ID]", "123456"),
        ("счёт 40817810099910004312 в банке", "[NUMBER]", "0999100"),
        ("карта 2202-2012-3456-7890", "[CARD]", "3456-7890"),
        ("почта ivan.petrov@example.ru", "[EMAIL]", "ivan.petrov"),
        ("пишите ivan dot petrov at mail dot ru", "[EMAIL]", "petrov"),
        ("račun 160-0000000012345-67 je moj", "[NATIONAL_ID]", "0000000012345"),
        ("IBAN RS35 2600 0560 1001 6113 79 hvala", "[IBAN]", "2600 0560"),
        ("ЈМБГ 0101990710006, хвала", "[CARD]", "0101990710006"),
        ("kartica 9891 1234 5678 9012", "[CARD]", "5678 9012"),
    ],
)
def test_redaction(text: str, placeholder: str, secret: str) -> None:
    out = redact(text)
    assert placeholder in out
    assert secret not in out


@pytest.mark.parametrize(
    "run",
    [
        "a" * 20_000, "1" * 20_000, "a." * 10_000, "12-" * 6_000, "a@" * 10_000, "a dot " * 3_400, "a at " * 4_000,
        "1 " * 10_000, "1." * 10_000, "1  " * 7_000, "AB12" * 5_000, "DE89 " * 4_000, "x (at) " * 2_800,
        "a.a at " * 2_800, "\x00" * 20_000, "8 " * 10_000, "0-12 " * 4_000, "064/" * 5_000,
        "123-45-" * 3_000, "1234567A" * 2_500, "12 34 " * 3_400, "160-" * 5_000, "ру@" * 10_000,
    ],
)  # fmt: skip
def test_redaction_is_linear_on_one_long_run(run: str) -> None:
    """A hostile transcript of one character class must not stall the scorer (it took 1.2-2.6 s a contact)."""
    import time

    started = time.perf_counter()
    redact(run)
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    "text",
    [
        "I was charged 25 pounds twice on 3 March, within 48 hours.",
        "I looked at example.com yesterday and will see you at noon. Then bye",
        "the order of 2026-03-02 at 10:00 cost 3.14 more",
        "on 08-12-2026 at 8 30 the order 0 150 200 went out",
    ],
)
def test_redaction_leaves_ordinary_text(text: str) -> None:
    assert redact(text) == text


def test_redaction_skips_only_patterns_a_text_cannot_match() -> None:
    """Patterns are skipped for texts that cannot hold them (too few digits, no @, no dot before a top-level
    domain, no + for a short phone): the same text out as running every pattern on every text, on strings
    dense in the characters they read."""
    from predictor.contacts.redact import _PII_PATTERNS

    def every_pattern(text: str) -> str:
        for pattern, placeholder in _PII_PATTERNS:
            text = pattern.sub(placeholder, text)
        return text

    rng = random.Random(11)
    alphabet = "0123456789" * 3 + "ABCDXYZabcz +-.()/@" + "٣"  # an Arabic-Indic digit: \d reads it too
    pieces = [" at ", " dot ", " DOT ", "(dot) ", "example.com", ".CO", ".uk", "jane.doe", "+7 ", "8 (", "DE", "RS35 ",
              "-", "  ", "\n"]  # fmt: skip
    texts = [
        "".join(rng.choice(alphabet) if rng.random() < 0.85 else rng.choice(pieces) for _ in range(rng.randint(1, 60)))
        for _ in range(20_000)
    ]
    # Each pattern's form with the fewest digits it allows, where a count set one too high would show.
    fewest = ["iban GB82ABCDEFGHIJK ok", "ni QQ 12 34 56 C ok", "card 1234567890123 ok", "call +1      2 now",
              "call (12) 345 678 now", "zvoni 8 12 34 56 ok", "local 123-45-67 ok", "account 123456 ok",
              "mail jane dot doe at example Dot Com", "mail jane.doe at example.COM",
              "card ٣٣٣٣ ٣٣٣٣ ٣٣٣٣ ٣٣٣٣"]  # fmt: skip
    for text in fewest + texts:
        assert redact(text) == every_pattern(text), text


def test_redaction_drops_nul_characters() -> None:
    """No database keeps NUL in text (PostgreSQL refuses the whole insert), and none carries meaning."""
    assert redact("bad\x00 nul") == "bad nul"


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(
        EmbeddingConfig(
            cache_dir=tmp_path_factory.mktemp("cache"),
            max_tokens=32,
            head_fraction=0.5,
            backend="sentence-transformers",
        )
    )


def test_long_text_keeps_head_and_tail(embedder: Embedder) -> None:
    text = "opening words " + "filler " * 200 + "closing words"
    head_tail = embedder.prepare([text])[0]
    head_only = embedder.prepare([text], truncation="head")[0]
    assert head_tail.startswith("opening words") and head_tail.endswith("closing words")
    assert SEPARATOR in head_tail
    assert "closing" not in head_only
    assert embedder.prepare(["short text"]) == ["short text"]


def test_encode_dedups_caches_and_zeroes_empty(embedder: Embedder) -> None:
    texts = ["the bill is wrong", "", "the bill is wrong", "my phone has no signal"]
    vectors = embedder.encode(texts)
    assert vectors.shape == (4, 384)
    np.testing.assert_array_equal(vectors[1], 0)
    np.testing.assert_allclose(vectors[0], vectors[2])
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 3]], axis=1), 1.0, rtol=1e-5)
    cache = EmbeddingCache(Path(embedder.config.cache_dir) / "embeddings.sqlite")
    assert len(cache) == 4  # two distinct texts, each under the text the model saw and under its raw form
    again = Embedder(embedder.config)  # a fresh process would start like this
    again._encode_uncached = None  # any call to the model would now fail: everything must come from the cache
    np.testing.assert_allclose(again.encode(texts), vectors)


def test_cache_off_writes_nothing_and_gives_the_same_vectors(embedder: Embedder, tmp_path: Path) -> None:
    texts = ["the bill is wrong", "a text the cached embedder never saw"]
    uncached = Embedder(embedder.config.model_copy(update={"cache": False, "cache_dir": tmp_path / "none"}))
    uncached._model = embedder._load()  # the same weights, already loaded
    np.testing.assert_allclose(uncached.encode(texts), embedder.encode(texts), atol=1e-6)
    assert not (tmp_path / "none").exists()


def test_paraphrases_are_closer_than_other_topics(embedder: Embedder) -> None:
    a, b, c = embedder.encode(["my bill is too high", "I was overcharged on my invoice", "how do I set up voicemail"])
    assert a @ b > a @ c


def test_pickled_embedder_carries_no_weights(embedder: Embedder) -> None:
    import pickle

    embedder.encode(["warm up"])
    blob = pickle.dumps(embedder)
    assert len(blob) < 10_000
    assert pickle.loads(blob).config == embedder.config


def test_onnx_int8_backend_matches_the_reference(tmp_path: Path) -> None:
    texts = ["my bill is too high", "Customer: the SIM never arrived. Agent: I've re-sent it from here.", ""]
    reference = Embedder(EmbeddingConfig(cache_dir=tmp_path / "a", backend="sentence-transformers")).encode(texts)
    onnx = Embedder(EmbeddingConfig(cache_dir=tmp_path / "b", backend="onnx-int8"))
    vectors = onnx.encode(texts)
    assert list((tmp_path / "b" / "onnx").glob("*.onnx"))  # exported once, kept beside the cache
    cosine = (vectors[:2] * reference[:2]).sum(axis=1)
    assert cosine.min() > 0.98
    np.testing.assert_array_equal(vectors[2], 0)
    reference_id = Embedder(EmbeddingConfig(cache_dir=tmp_path / "a", backend="sentence-transformers")).model_id
    assert onnx.model_id != reference_id  # separate cache keys


def test_model2vec_backend_is_distilled_offline_and_agrees_roughly(tmp_path: Path) -> None:
    texts = ["my bill is too high", "I was overcharged on my invoice", "how do I set up voicemail", ""]
    static = Embedder(EmbeddingConfig(cache_dir=tmp_path / "m", backend="model2vec"))
    vectors = static.encode(texts)
    assert vectors.shape == (4, 256)
    assert list((tmp_path / "m" / "model2vec").glob("*/config.json"))
    np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[3], 0)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # still semantic


def test_the_tokenizer_file_reads_as_transformers_does(small_log) -> None:
    """The service cuts transcripts with the `tokenizers` library (transformers would import PyTorch): the
    same ids, and the same text for every cut, as transformers' fast tokenizer on the simulated log."""
    from transformers import AutoTokenizer

    from predictor.features.embed import WordPieces, default_model_path

    path = Path(default_model_path())
    reference = AutoTokenizer.from_pretrained(str(path))
    reference.model_max_length = 1_000_000
    ours = WordPieces(path / "tokenizer.json")
    texts = [*small_log.contacts["transcript"].head(400), "Don't , I 'm fine ! «quoted» ünïcödé 🙏 [EMAIL] a.b\tc"]
    ids = reference(texts, add_special_tokens=False, truncation=False)["input_ids"]
    assert ours(texts)["input_ids"] == ids
    for row in ids:
        for cut in (row[:40], row[-80:]):
            assert ours.decode(cut) == reference.decode(cut)


def test_a_text_ending_another_is_read_once_with_the_same_ids(small_log) -> None:
    """A conversation's closing turns end the conversation: the tokenizer reads them once, and the
    conversation as its part before them plus them (``WordPieces._ids``). The ids equal the library's for
    every text, with the closing turns of the simulated transcripts, ends of ends, and texts that end another
    only mid-line or across other line breaks (read alone)."""
    from predictor.features.build import closing_turns
    from predictor.features.embed import WordPieces, _line_suffixes, default_model_path

    ours = WordPieces(Path(default_model_path()) / "tokenizer.json")
    transcripts = [t for t in small_log.contacts["transcript"].head(300) if t]
    odd = [
        "Agent: é\nUser: 中文 ok\nAgent: ünï [EMAIL]", "User: 中文 ok\nAgent: ünï [EMAIL]", "Agent: ünï [EMAIL]",
        "one\r\ntwo\r\nthree", "two\r\nthree", "three", "x\nab cd", "b cd", "cd", "Agent:x\n\n\nlast", "\nlast",
    ]  # fmt: skip
    closing = [closing_turns(t, turns) for turns in (2, 1) for t in transcripts]
    texts = [*transcripts, *closing, *odd]
    texts = list(dict.fromkeys(texts))
    within = _line_suffixes(texts)
    assert len(within) > len(transcripts) // 2  # most conversations are read with their closing turns
    library = [e.ids for e in ours._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    assert ours._ids(texts) == library


def _cuts_of_whole_texts(embedder: Embedder, texts: list[str], strategy: str) -> list[str]:
    """How ``prepare`` cut texts when it tokenized all of each: the reference the ends-only reading must equal."""
    tokenizer = embedder._load_tokenizer()
    budget = embedder.config.max_tokens - 2
    room = budget - 3
    head = int(room * embedder.config.head_fraction)
    out = []
    for text, ids in zip(texts, tokenizer(texts)["input_ids"], strict=True):
        if len(ids) <= budget:
            out.append(text)
        elif strategy == "head":
            out.append(tokenizer.decode(ids[:budget]))
        else:
            out.append(tokenizer.decode(ids[:head]) + SEPARATOR + tokenizer.decode(ids[-(room - head) :]))
    return out


@pytest.mark.parametrize(("max_tokens", "head_fraction"), [(128, 0.3), (32, 0.5), (16, 0.0)])
def test_reading_only_the_ends_of_a_long_text_cuts_it_as_reading_all_of_it(
    small_log, tmp_path: Path, max_tokens: int, head_fraction: float
) -> None:
    """Long texts are tokenized at their ends only (cut at spaces): the model sees exactly what it saw when
    the whole text was tokenized, for the simulated log and for texts built to break the cut."""
    embedder = Embedder(EmbeddingConfig(cache_dir=tmp_path, max_tokens=max_tokens, head_fraction=head_fraction))
    filler = "I have been waiting for this for quite a while and I checked the app twice already. "
    odd = [
        filler * 20,
        filler * 250,  # 21,000 characters
        "x" * 20_000,  # no space at all
        "word " * 5 + "y" * 5_000 + " end",  # one word over the word-piece limit
        ("ΟΔΟΣ ΣΟΦΟΣ " * 300).strip(),  # final sigma at every cut
        "回复 " + "我的账单有问题" * 400,  # CJK split per character, spaces rare
        (" \u0301e" * 2_000),  # a combining accent right after each space
        "tabs\tand\nnew lines\r\n" * 500,
        "a\x1cb " * 3_000,  # a separator Python calls space and BERT drops
        "Клиент: у меня не проходит оплата картой, помогите. " * 100,
        "🙏 " * 3_000 + "thanks",
        " " * 5_000 + "late start",
        "early end" + " " * 5_000,
        ("  ".join(["double  spaced"] * 800)),
    ]
    # Texts whose ends hold just about the tokens asked for, where a cut inside a word would show.
    rng = random.Random(7)
    words = ["a", "ok", "bill", "waiting", "internationalization", "x" * 30, "ünïcödé", "don't", "re-sent", "4.5"]
    near = [
        "".join(rng.choice(words) + rng.choice([" ", "  ", "\t", "\n", ", "]) for _ in range(rng.randint(5, 80)))
        for _ in range(1_000)
    ]
    texts = [t for t in small_log.contacts["transcript"].head(300) if isinstance(t, str)] + odd + near
    for strategy in ("head_tail", "head"):
        prepared = embedder.prepare(texts, truncation=strategy)
        expected = _cuts_of_whole_texts(embedder, [redact(t) for t in texts], strategy)
        assert prepared == expected, strategy


@pytest.fixture(scope="module")
def static_model(settings) -> Embedder:
    """The default (model2vec) backend on the session's cache: distilled once, shared with training tests."""
    embedder = Embedder(settings.embedding.model_copy(update={"backend": "model2vec", "cache": False}))
    embedder.encode(["warm up"])
    return embedder


@pytest.mark.parametrize(
    ("max_tokens", "head_fraction", "strategy"),
    [
        (128, 0.3, "head_tail"),
        (128, 0.3, "head"),
        (32, 0.5, "head_tail"),
        (16, 0.0, "head_tail"),
        (48, 1.0, "head_tail"),
    ],
)
def test_a_static_model_embeds_from_the_cut_ids_as_from_the_cut_text(
    static_model: Embedder, small_log, max_tokens: int, head_fraction: float, strategy: str
) -> None:
    """The static backend embeds a cut text from the ids the cut read, not from its decoded text tokenized
    again: the same vectors, bit for bit, on the simulated transcripts and their closing turns, on texts built
    to break the cut (a tail that starts inside a word, pieces only one vocabulary has, long words, blank
    ones), and with most texts taking the ids' way."""
    from predictor.features.build import closing_turns

    config = static_model.config.model_copy(
        update={"max_tokens": max_tokens, "head_fraction": head_fraction, "truncation": strategy}
    )
    by_ids, by_text = Embedder(config), Embedder(config)
    by_ids._model = by_text._model = static_model._load()
    by_text._embedded_from_ids = lambda *args: []  # the text way only
    taken: list[int] = []
    embedded_from_ids = by_ids._embedded_from_ids
    by_ids._embedded_from_ids = lambda *args: taken.append(len(out := embedded_from_ids(*args))) or out
    transcripts = [t for t in small_log.contacts["transcript"].head(300) if isinstance(t, str)]
    rng = random.Random(11)
    words = ["a", "ok", "bill", "internationalization", "unaffable", "x" * 120, "ünïcödé", "don't", "4.5", "回复", "!"]
    near = [
        "".join(rng.choice(words) + rng.choice([" ", "  ", "\n", ", ", ". "]) for _ in range(rng.randint(3, 90)))
        for _ in range(600)
    ]
    odd = [
        "[CLS] hello [SEP] there [MASK] " * 40, "ask [UNK] or [PAD] " * 30, "\u200b", " ", "\x00", "\x1c\x1c",
        "I do not know , do n't say it 's fine ! " * 30, ("qwertyuiopasdfghjklzxcvbnm" * 5 + " ") * 40,
        "y" * 3_100 + " late", "word " * 600 + "y" * 5_000, ("ΟΔΟΣ ΣΟΦΟΣ " * 300).strip(),
        "Клиент: у меня не проходит оплата. " * 80,
    ]  # fmt: skip
    texts = transcripts + [closing_turns(t, 4) for t in transcripts] + near + odd
    np.testing.assert_array_equal(by_ids.encode(texts), by_text.encode(texts))
    assert sum(taken) > 0.8 * len(set(texts))


def test_another_tokenizer_cuts_as_the_word_pieces_do(small_log, tmp_path: Path) -> None:
    """A tokenizer without the ends-only reading (the multilingual backends' own) tokenizes whole texts: short
    ones stay as they are, long ones are cut alike (transformers' tokenizer of the same vocabulary stands in)."""
    from transformers import AutoTokenizer

    from predictor.features.embed import default_model_path

    words = Embedder(EmbeddingConfig(cache_dir=tmp_path, max_tokens=32, head_fraction=0.5))
    other = Embedder(EmbeddingConfig(cache_dir=tmp_path, max_tokens=32, head_fraction=0.5))
    other._tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    other._tokenizer.model_max_length = 1_000_000
    texts = ["short text", *[t for t in small_log.contacts["transcript"].head(100) if isinstance(t, str)]]
    for strategy in ("head_tail", "head"):
        assert other.prepare(texts, truncation=strategy) == words.prepare(texts, truncation=strategy)
    assert other.prepare(["short text"]) == ["short text"]


def test_a_distilled_model_is_published_whole_and_once(tmp_path: Path) -> None:
    """Written aside and renamed: a second writer (a Dask worker sharing the cache) keeps the first copy, and
    a writer that fails leaves nothing half-written behind."""
    from predictor.features.embed import publish_folder

    target = tmp_path / "cache" / "model"
    assert publish_folder(target, lambda folder: (folder / "weights").write_text("first"))
    assert not publish_folder(target, lambda folder: (folder / "weights").write_text("second"))
    assert (target / "weights").read_text() == "first"

    def broken(folder: Path) -> None:
        (folder / "weights").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_folder(tmp_path / "cache" / "other", broken)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model"]
