"""Tokenizer resolution and counting: offline default, local HF folders, engine endpoints."""
import logging
import os
import threading
from pathlib import Path

import pytest
import sentencepiece

from app.pipeline import tokenizers
from app.pipeline.engine import TransientEngineError
from app.services.manifests import Flavor
from app.pipeline.tokenizers import (CharEstimateTokenizer, HFTokenizer, RemoteTokenizer,
                            SentencePieceTokenizer, Tokenizer, get_tokenizer, server_root)
from tests.fake_engine import FakeEngine
from tests.processes import free_port

DATA = Path(__file__).parent / "data"
FR_MEDIUM = DATA / "fr" / "fr_medium_an_qag_2013-02-12.txt"
SENTENCE = "M. le président : La parole est à Mme Nathalie Kosciusko-Morizet."
NOT_CACHED = "no-such-org/no-such-model-for-tests"


def mistral_model_file() -> str:
    import mistral_common
    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


SP = sentencepiece.SentencePieceProcessor(model_file=mistral_model_file())


def flavor(**overrides) -> Flavor:
    values = dict(name="t", model=NOT_CACHED, total_context_length=32768,
                  max_generation_length=2048, create_new_turn_after=178, summary_turns=2,
                  max_new_turns=6)
    values.update(overrides)
    return Flavor(**values)


@pytest.fixture(autouse=True)
def fresh_cache():
    tokenizers.clear_cache()
    yield
    tokenizers.clear_cache()


# --- offline default ---------------------------------------------------------------------

def test_offline_default_is_mistral_sentencepiece_and_counts_right():
    tok = get_tokenizer(flavor())
    assert isinstance(tok, SentencePieceTokenizer)
    assert "tokenizer.model.v1" in tok.name
    assert tok.count(SENTENCE) == len(SP.encode(SENTENCE)) == 24
    assert tok.count("") == 0
    text = FR_MEDIUM.read_text(encoding="utf-8")
    n = tok.count(text)
    assert n == len(SP.encode(text))
    assert 2.5 < len(text) / n < 4.5  # French on a 32k Llama vocab: about 3.2 chars a token
    lines = text.splitlines()
    assert tok.count_many(lines) == [len(SP.encode(line)) for line in lines]
    assert tok.count_many([]) == []


def test_mistral_chat_overhead_is_bos_and_inst_markers():
    tok = get_tokenizer(flavor())
    message = "Résume cette séance."
    templated = SP.encode(f"[INST] {message} [/INST]", add_bos=True)
    assert tok.chat_overhead() == len(templated) - len(SP.encode(message)) == 8


def test_cached_per_process_and_thread_safe():
    results = []
    f = flavor()
    threads = [threading.Thread(target=lambda: results.append(get_tokenizer(f))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert get_tokenizer(flavor(name="other", max_new_turns=3)) is results[0]  # same model
    get_tokenizer(flavor(model="another/model"))
    assert len(tokenizers._cache) == 2  # resolved per model (both fall back to the one default here)


def test_unreachable_engine_falls_back_to_default(caplog):
    caplog.set_level(logging.INFO, logger="app.pipeline.tokenizers")
    tok = get_tokenizer(flavor(), api_base="http://127.0.0.1:9/v1", api_key="sk-secret-xyz")
    assert isinstance(tok, SentencePieceTokenizer)
    assert "sk-secret-xyz" not in caplog.text
    assert "tokenizer.model.v1" in caplog.text  # the choice is logged


def test_a_tokenizer_that_encodes_to_nothing_is_refused():
    class Empty(Tokenizer):
        name = "empty"

        def count(self, text):
            return 0

    with pytest.raises(ValueError, match="0 tokens"):
        tokenizers._check(Empty())


def test_char_estimate_is_the_last_resort(monkeypatch):
    monkeypatch.setattr(tokenizers, "SentencePieceTokenizer",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("gone")))
    tok = get_tokenizer(flavor())
    assert isinstance(tok, CharEstimateTokenizer)
    assert tok.count("x" * 30) == 10 and tok.chat_overhead() > 0


# --- local Hugging Face folders --------------------------------------------------------------

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory):
    """A small byte-level BPE trained here on the French data, saved as an HF tokenizer folder."""
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                  special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator(FR_MEDIUM.read_text(encoding="utf-8").splitlines(), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<s>", eos_token="</s>")
    hf.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("bpe")
    hf.save_pretrained(str(folder))
    return folder, rust


def test_hf_folder_from_flavor_tokenizer(bpe_folder):
    folder, rust = bpe_folder
    tok = get_tokenizer(flavor(tokenizer=str(folder)))
    assert isinstance(tok, HFTokenizer) and tok.name == f"hf:{folder}"
    text = FR_MEDIUM.read_text(encoding="utf-8")
    assert tok.count(SENTENCE) == len(rust.encode(SENTENCE, add_special_tokens=False).ids) > 10
    assert tok.count(text) == len(rust.encode(text, add_special_tokens=False).ids)
    assert 2.0 < len(text) / tok.count(text) < 4.5
    lines = text.splitlines()[:40]
    assert tok.count_many(lines) == [len(rust.encode(line).ids) for line in lines]
    # "<s><|user|>\n" + message + "\n<|assistant|>\n": BOS, 2 role tokens, 3 newlines.
    assert tok.chat_overhead() == 6


def test_hf_folder_as_model_name(bpe_folder):
    folder, _ = bpe_folder
    tok = get_tokenizer(flavor(model=str(folder)))
    assert tok.name == f"hf:{folder}"


def test_folder_with_only_a_sentencepiece_model(tmp_path):
    # transformers needs protobuf to convert it; sentencepiece reads it directly.
    (tmp_path / "tokenizer.model").write_bytes(Path(mistral_model_file()).read_bytes())
    tok = get_tokenizer(flavor(tokenizer=str(tmp_path)))
    assert tok.name.startswith("sentencepiece:") and str(tmp_path) in tok.name
    assert tok.count(SENTENCE) == 24


def test_missing_local_tokenizer_falls_through(tmp_path):
    tok = get_tokenizer(flavor(tokenizer=str(tmp_path / "nothing-here")))
    assert "tokenizer.model.v1" in tok.name


# --- the engine's own /tokenize ---------------------------------------------------------------

def mistral_engine(kind: str, port: int = 0) -> FakeEngine:
    """The fake engine speaking vLLM's or llama.cpp's tokenize API (llama.cpp's with /apply-template),
    counting with the Mistral sentencepiece model and its [INST] chat template."""
    return FakeEngine(port=port, tokenize=kind, encode=lambda text, special: SP.encode(text, add_bos=special),
                      chat_template=lambda messages: f"[INST] {messages[0]['content']} [/INST]")


@pytest.fixture(params=["vllm", "llamacpp"])
def engine(request):
    with mistral_engine(request.param) as eng:
        yield request.param, eng.url, eng


def test_engine_tokenize_endpoint(engine, caplog):
    caplog.set_level(logging.INFO, logger="app.pipeline.tokenizers")
    kind, root, eng = engine
    tok = get_tokenizer(flavor(), api_base=root + "/v1", api_key="sk-secret-xyz")
    assert isinstance(tok, RemoteTokenizer) and tok.name == f"{kind}:{root}/tokenize"
    assert tok.count(SENTENCE) == len(SP.encode(SENTENCE)) == 24
    assert tok.chat_overhead() == 8
    assert all(r["authorization"] == "Bearer sk-secret-xyz" for r in eng.requests)
    assert "sk-secret-xyz" not in caplog.text and f"{kind}:{root}/tokenize" in caplog.text
    if kind == "vllm":
        assert eng.requests[-1]["model"] == NOT_CACHED


def test_engine_counts_are_cached_and_batched(engine):
    kind, root, eng = engine
    tok = get_tokenizer(flavor(), api_base=root)
    lines = FR_MEDIUM.read_text(encoding="utf-8").splitlines()[:30]
    eng.reset()
    texts = lines * 20 + [""]
    counts = tok.count_many(texts)
    assert counts == [len(SP.encode(t)) for t in texts]
    assert len(eng.requests) == len(set(lines))  # one request per distinct text
    assert tok.count_many(lines) == counts[:30] and len(eng.requests) == len(set(lines))


def test_an_engine_that_stops_answering_its_tokenize_raises_a_transient_error(engine):
    """A job retries it like a failed completion (tests/test_summarize.py), instead of failing."""
    kind, root, eng = engine
    tok = get_tokenizer(flavor(), api_base=root)
    assert tok.count("bonjour") > 0                     # the engine answers
    dead = RemoteTokenizer(f"http://127.0.0.1:{free_port()}", kind, NOT_CACHED, timeout=2)   # nothing listens there
    with pytest.raises(TransientEngineError, match="/tokenize did not answer"):
        dead.count("une phrase jamais comptée")


def test_server_root():
    assert server_root("http://h:8000/v1") == "http://h:8000"
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("http://h/engine") == "http://h/engine"


def test_fallback_while_the_engine_is_down_is_resolved_again_later(monkeypatch):
    """An engine still starting must not pin the default tokenizer for the life of the process."""
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    first = get_tokenizer(flavor(), api_base=root + "/v1")
    assert "tokenizer.model.v1" in first.name  # nothing listens yet
    assert get_tokenizer(flavor(), api_base=root + "/v1") is first  # cached within the retry delay
    late = mistral_engine("vllm", port).start()
    try:
        monkeypatch.setattr(tokenizers, "FALLBACK_RETRY_S", 0.0)
        tokenizers._fallback_until.update({k: 0.0 for k in tokenizers._fallback_until})
        later = get_tokenizer(flavor(), api_base=root + "/v1")
        assert isinstance(later, RemoteTokenizer) and later.name == f"vllm:{root}/tokenize"
        assert get_tokenizer(flavor(), api_base=root + "/v1") is later  # a real answer stays cached
    finally:
        late.stop()
