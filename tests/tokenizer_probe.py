"""A real tokenizer that tells the test how many characters it is handed.

Planning must stay linear in the transcript's length; tests check it (and pause it) by
watching what reaches the tokenizer rather than by timing it.
"""
from app.pipeline.tokenizers import Tokenizer


class WatchedTokenizer(Tokenizer):
    """Counts as `inner` does; every text it counts goes through `seen(chars)` first."""

    def __init__(self, inner: Tokenizer):
        self.inner, self.chars = inner, 0
        self.name = inner.name

    def seen(self, chars: int) -> None:
        self.chars += chars

    def count(self, text):
        self.seen(len(text))
        return self.inner.count(text)

    def count_many(self, texts):
        texts = list(texts)
        self.seen(sum(map(len, texts)))
        return self.inner.count_many(texts)

    def chat_overhead(self):
        return self.inner.chat_overhead()
