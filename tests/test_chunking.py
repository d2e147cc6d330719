"""Virtual turns and batch planning on the shared transcripts, counted by the real tokenizer."""
import statistics
import time
from pathlib import Path

import pytest

from app.pipeline import splitting  # the splitter's sentence boundaries, tested directly
from app.pipeline.chunking import (Batch, BudgetError, default_context_reserve, fill_template,
                                   plan_batches, prompt_room, render_turn, split_long_turns, split_text)
from app.services.manifests import Flavor
from app.pipeline.tokenizers import Tokenizer, default_tokenizer
from app.pipeline.transcript import Turn, parse_transcript
from tests.tokenizer_probe import WatchedTokenizer

DATA = Path(__file__).parent / "data"
SERVICES = Path(__file__).parent.parent / "services"
FR_MEDIUM = DATA / "fr" / "fr_medium_an_qag_2013-02-12.txt"
AW01 = DATA / "awkward" / "aw01_very_long_single_turn_fr.txt"
TRANSCRIPTS = sorted(p for p in DATA.glob("*/*")
                     if p.suffix in (".txt", ".srt", ".vtt") and ".summary" not in p.name)
CRA_TEMPLATE = (SERVICES / "cra.txt").read_text(encoding="utf-8")        # 2 fields
SUMMARY_TEMPLATE = (SERVICES / "summary.txt").read_text(encoding="utf-8")  # 1 field
TOK = default_tokenizer()  # Mistral's sentencepiece, as the seed's flavors use


def cra_flavor(**overrides) -> Flavor:
    """The seed's cra/mixtral settings."""
    values = dict(name="mixtral", model="TheBloke/Instruct_Mixtral-8x7B-v0.1_Dolly15K-AWQ",
                  total_context_length=32768, max_generation_length=2048,
                  create_new_turn_after=178, summary_turns=2, max_new_turns=6)
    values.update(overrides)
    return Flavor(**values)


def parse(path: Path) -> list[Turn]:
    return parse_transcript(path.read_bytes(), path.name)


def words(turns) -> list[str]:
    return " ".join(t.text for t in turns).split()


def prompt_of(batch: Batch, template: str, fields: int) -> str:
    text = "\n".join(render_turn(t) for t in batch.turns)
    return fill_template(template, ["", text] if fields == 2 else [text])


def assert_plan_is_sound(turns, batches, template, fields, flavor, tokenizer, reserve):
    """Every turn once, in order, each batch within every limit by a real count."""
    virtual = [t for b in batches for t in b.turns]
    assert words(virtual) == words(turns)
    assert [b.start for b in batches] == [sum(len(b.turns) for b in batches[:i])
                                          for i in range(len(batches))]
    # Virtual turns keep their speaker: walk the original turns along the pieces.
    i, consumed = 0, []
    for vt in virtual:
        while turns[i].speaker != vt.speaker or not turns[i].text.strip():
            assert not consumed, "a turn was cut into pieces of different speakers"
            i += 1
        consumed += vt.text.split()
        if consumed == turns[i].text.split():
            i, consumed = i + 1, []
    assert not consumed and all(not t.text.strip() for t in turns[i:])
    budget = flavor.total_context_length - flavor.max_generation_length - reserve
    counts = tokenizer.count_many([prompt_of(b, template, fields) for b in batches])
    for batch, n in zip(batches, counts):
        assert 1 <= len(batch.turns) <= flavor.max_new_turns
        assert n + tokenizer.chat_overhead() <= budget
    if turns:
        assert batches[-1].turns[-1].text.split()[-3:] == turns[-1].text.split()[-3:]


# --- rendering and templates --------------------------------------------------------------

def test_render_turn():
    assert render_turn(Turn("M. le président", "La parole est à M. Jégo.")) == \
        "M. le président : La parole est à M. Jégo."
    assert render_turn(Turn("", "Sans orateur.")) == "Sans orateur."


def test_fill_template_fills_in_order_and_leaves_other_braces():
    template = "Contexte :\n{}\nJSON {\"a\": {x}} {0} {{}}\n"
    filled = fill_template(template, ["C {}", "T {name}"])
    # The second "{}" is the one inside "{{}}"; values are never re-read as placeholders.
    assert filled == "Contexte :\nC {}\nJSON {\"a\": {x}} {0} {T {name}}\n"
    assert fill_template(CRA_TEMPLATE, ["X", "Y"]).count("X") == 1
    with pytest.raises(ValueError, match="2 '{}' placeholders, 1 values"):
        fill_template("{} {}", ["a"])
    with pytest.raises(ValueError):
        fill_template("no placeholder", ["a"])
    assert fill_template("nothing", []) == "nothing"


# --- splitting ----------------------------------------------------------------------------------

def test_long_speech_is_packed_greedily_into_full_pieces():
    speech = max(parse(AW01), key=lambda t: len(t.text)).text
    assert len(speech) > 18_000
    pieces = split_text(speech, TOK, 178)
    assert "".join(pieces) == speech
    counts = TOK.count_many([p.strip() for p in pieces])
    assert max(counts) <= 178
    # Greedy: about total/178 pieces, not one per sentence, and most nearly full.
    assert len(pieces) <= 1.3 * TOK.count(speech) / 178
    assert statistics.median(counts) >= 140
    # Cuts fall between sentences, except inside the one sentence longer than the limit.
    assert max(TOK.count(s.strip()) for s in splitting.sentences(speech)) > 178
    assert sum(not p.endswith((". ", "! ", "? ", "» ")) for p in pieces[:-1]) == 1


def test_french_punctuation_does_not_end_sentences():
    sentences = [
        "M. le président, Mme Dupont et MM. Martin ont signé l'art. 3, p. 12, etc. sans débat. ",
        "Le taux passe de 3,5 % à 4 % en 2013. ",
        "« Pourquoi ? » demande-t-il. ",
        "« Parce que ! » ",
        "Vraiment ?! ",
        "Oui… ",
        "(Applaudissements sur les bancs du groupe SRC.) ",
        "B. Dogan répond.",
    ]
    assert splitting.sentences("".join(sentences)) == sentences


def test_one_long_sentence_is_cut_between_words_and_a_long_word_by_characters():
    sentence = "et " * 300 + "voilà."
    pieces = split_text(sentence, TOK, 50)
    assert "".join(pieces) == sentence
    assert all(TOK.count(p.strip()) <= 50 for p in pieces)
    assert all(p.endswith(" ") for p in pieces[:-1])  # no word broken
    word = "anticonstitutionnellement" * 20
    pieces = split_text(word, TOK, 10)
    assert "".join(pieces) == word
    assert all(TOK.count(p) <= 10 for p in pieces) and len(pieces) >= TOK.count(word) / 10


def test_split_text_edge_cases():
    assert split_text("", TOK, 10) == []
    assert split_text("   ", TOK, 10) == ["   "]
    assert split_text("  Court.  ", TOK, 10) == ["  Court.  "]
    text = "  Une phrase. Une autre phrase.\nEt une troisième !  "
    pieces = split_text(text, TOK, 4)
    assert "".join(pieces) == text and all(TOK.count(p.strip()) <= 4 for p in pieces)


def test_split_long_turns_keeps_speakers_and_limits_rendered_lines():
    turns = parse(AW01)
    virtual = split_long_turns(turns, TOK, 178)
    assert max(TOK.count_many([render_turn(t) for t in virtual])) <= 178
    short = [t for t in turns if TOK.count(render_turn(t)) <= 178]
    assert [t for t in virtual if t in short] == short  # short turns are left alone
    assert len(short) == 3 and 35 <= len(virtual) - 3 <= 50
    for turn in turns:
        pieces = [t for t in virtual if t.speaker == turn.speaker and t not in short]
        if turn not in short:
            assert " ".join(t.text for t in pieces) == turn.text
    assert all(t.text == t.text.strip() for t in virtual)


class BytePairsTokenizer(Tokenizer):
    """Not additive over sentences: one token per 2 UTF-8 bytes of the whole text."""

    name = "pairs"

    def count(self, text):
        return (len(text.encode()) + 1) // 2


def test_non_additive_tokenizer_still_gets_exact_limits():
    turns = parse(AW01)
    virtual = split_long_turns(turns, BytePairsTokenizer(), 60)
    assert all(BytePairsTokenizer().count(render_turn(t)) <= 60 for t in virtual)
    assert words(virtual) == words(turns)


# --- batches --------------------------------------------------------------------------------

def test_cra_settings_on_fr_medium():
    flavor = cra_flavor()
    reserve = default_context_reserve(flavor)
    assert reserve == 2 * 178
    turns = parse(FR_MEDIUM)
    batches = plan_batches(turns, CRA_TEMPLATE, 2, flavor, TOK, reserve)
    virtual = [t for b in batches for t in b.turns]
    assert len(turns) == 149 and 240 <= len(virtual) <= 270   # 254 with this tokenizer
    assert 38 <= len(batches) <= 50                             # 43 (6 turns a batch binds)
    assert all(len(b.turns) == 6 for b in batches[:-1])
    assert_plan_is_sound(turns, batches, CRA_TEMPLATE, 2, flavor, TOK, reserve)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
def test_every_shared_transcript_plans_soundly(path):
    turns = parse(path)
    for template, fields in ((CRA_TEMPLATE, 2), (SUMMARY_TEMPLATE, 1)):
        flavor = cra_flavor()
        reserve = default_context_reserve(flavor) if fields == 2 else 0
        batches = plan_batches(turns, template, fields, flavor, TOK, reserve)
        assert_plan_is_sound(turns, batches, template, fields, flavor, TOK, reserve)


@pytest.mark.parametrize("path", [FR_MEDIUM, DATA / "en" / "en_medium_ami_ES2004c.txt",
                                  DATA / "awkward" / "aw05_subtitles_en.srt"], ids=lambda p: p.name)
def test_token_budget_binds_in_a_small_context(path):
    # smollm2-like: 4096 tokens, many turns a batch: the token budget decides, not maxNewTurns.
    turns = parse(path)
    flavor = cra_flavor(total_context_length=2048, max_generation_length=512,
                        create_new_turn_after=150, max_new_turns=100)
    reserve = default_context_reserve(flavor)
    batches = plan_batches(turns, CRA_TEMPLATE, 2, flavor, TOK, reserve)
    assert_plan_is_sound(turns, batches, CRA_TEMPLATE, 2, flavor, TOK, reserve)
    room = prompt_room(CRA_TEMPLATE, 2, flavor, TOK, reserve)
    used = [TOK.count("\n".join(map(render_turn, b.turns))) for b in batches[:-1]]
    assert statistics.mean(used) > 0.85 * room  # packed full


def test_room_smaller_than_a_virtual_turn_cuts_turns_further():
    turns = parse(AW01)
    flavor = cra_flavor(total_context_length=400, max_generation_length=100, summary_turns=0)
    room = prompt_room(SUMMARY_TEMPLATE, 1, flavor, TOK, 0)
    assert 16 <= room < 178
    batches = plan_batches(turns, SUMMARY_TEMPLATE, 1, flavor, TOK, 0)
    assert_plan_is_sound(turns, batches, SUMMARY_TEMPLATE, 1, flavor, TOK, 0)


def test_non_additive_tokenizer_batches_fit_by_real_counts():
    tok = BytePairsTokenizer()
    turns = parse(DATA / "fr" / "fr_small_an_qag_securite_alimentaire_2013-02-12.txt")
    flavor = cra_flavor(total_context_length=1500, max_generation_length=200, max_new_turns=50)
    batches = plan_batches(turns, CRA_TEMPLATE, 2, flavor, tok, 100)
    assert_plan_is_sound(turns, batches, CRA_TEMPLATE, 2, flavor, tok, 100)


def test_prompt_room_and_budget_error():
    flavor = cra_flavor()
    empty = TOK.count(fill_template(CRA_TEMPLATE, ["", ""]))
    assert prompt_room(CRA_TEMPLATE, 2, flavor, TOK, 356) == \
        32768 - 2048 - TOK.chat_overhead() - 356 - empty
    tight = cra_flavor(total_context_length=2048 + empty + TOK.chat_overhead() + 10)
    assert prompt_room(CRA_TEMPLATE, 2, tight, TOK, 0) == 10
    with pytest.raises(BudgetError, match="leave 10 tokens"):
        plan_batches(parse(AW01), CRA_TEMPLATE, 2, tight, TOK, 0)
    with pytest.raises(BudgetError):
        plan_batches(parse(AW01), CRA_TEMPLATE, 2, cra_flavor(), TOK, 32768)
    with pytest.raises(ValueError):
        prompt_room(CRA_TEMPLATE, 3, flavor, TOK, 0)


def test_default_context_reserve():
    assert default_context_reserve(cra_flavor()) == 356
    assert default_context_reserve(cra_flavor(summary_turns=0)) == 0
    assert default_context_reserve(cra_flavor(summary_turns=3, create_new_turn_after=150)) == 450


def test_empty_and_unnamed_transcripts():
    assert plan_batches([], CRA_TEMPLATE, 2, cra_flavor(), TOK, 356) == []
    turns = parse(DATA / "awkward" / "aw02_no_speaker_labels_fr.txt")
    batches = plan_batches(turns, SUMMARY_TEMPLATE, 1, cra_flavor(), TOK, 0)
    assert all(t.speaker == "" for b in batches for t in b.turns)
    assert_plan_is_sound(turns, batches, SUMMARY_TEMPLATE, 1, cra_flavor(), TOK, 0)


# --- long lines without spaces: planning stays linear ------------------------------------------

class CountingTokenizer(WatchedTokenizer):
    """The real tokenizer, adding up the characters it is given; it stops the test as soon as they
    pass `budget` (cutting used to count the whole rest of the line at every cut: minutes)."""

    def __init__(self, inner: Tokenizer, budget: int):
        super().__init__(inner)
        self.budget = budget

    def seen(self, chars: int) -> None:
        super().seen(chars)
        assert self.chars <= self.budget, f"more than {self.budget:,} characters tokenized"


def spaceless(size: int) -> str:
    """A French debate with every space and line break taken out, repeated to `size` characters."""
    text = "".join(FR_MEDIUM.read_text(encoding="utf-8").split())
    return (text * (size // len(text) + 1))[:size]


def plan_counted(line: str, flavor: Flavor, per_char: int):
    """Plan one turn holding `line`, allowing the tokenizer `per_char` characters per character of it."""
    tok = CountingTokenizer(TOK, per_char * len(line))
    started = time.perf_counter()
    batches = plan_batches([Turn("Alice", line)], CRA_TEMPLATE, 2, flavor, tok, default_context_reserve(flavor))
    elapsed = time.perf_counter() - started
    return batches, tok.chars / len(line), elapsed


def assert_line_plan_is_sound(line, batches, flavor):
    """Every character once, in order; every virtual turn and every prompt within its limit."""
    virtual = [t for b in batches for t in b.turns]
    assert "".join(t.text for t in virtual) == line and {t.speaker for t in virtual} == {"Alice"}
    if flavor.create_new_turn_after:
        assert max(TOK.count_many([render_turn(t) for t in virtual])) <= flavor.create_new_turn_after
    budget = flavor.total_context_length - flavor.max_generation_length - default_context_reserve(flavor)
    counts = TOK.count_many([prompt_of(b, CRA_TEMPLATE, 2) for b in batches])
    assert max(counts) + TOK.chat_overhead() <= budget
    assert all(1 <= len(b.turns) <= (flavor.max_new_turns or len(virtual)) for b in batches)


def test_a_long_line_without_spaces_is_planned_in_linear_time():
    """Issue 15: one line without spaces pinned the runner for hours. Cutting it by characters now
    counts about one piece around each cut: the characters tokenized are a small multiple of the
    line's, whatever its length (timings are printed, never asserted)."""
    line = spaceless(1_000_000)
    batches, per_char, elapsed = plan_counted(line, cra_flavor(), per_char=12)   # about 8 here
    started = time.perf_counter()
    TOK.count(line)
    raw = time.perf_counter() - started
    print(f"a 1,000,000-character line without spaces planned in {elapsed:.2f} s ({elapsed / raw:.1f} x one "
          f"raw tokenizer pass of {raw:.2f} s), {per_char:.1f} characters tokenized per character")
    assert len(batches) >= 300                          # about 2,300 virtual turns of at most 178 tokens
    assert_line_plan_is_sound(line, batches, cra_flavor())


def test_re_planning_after_short_estimates_stays_linear():
    """With createNewTurnAfter 0 a line is cut to the whole room, and nearly every batch's estimate
    is a token short (where the line meets the template): each is re-planned. Re-planning recounted
    every later prompt each time, quadratic in the batches."""
    flavor = cra_flavor(total_context_length=4096, max_generation_length=512, create_new_turn_after=0,
                        max_new_turns=0)
    line = spaceless(400_000)
    batches, per_char, elapsed = plan_counted(line, flavor, per_char=24)          # about 18 here
    print(f"a 400,000-character line cut to the whole room: {len(batches)} batches planned in {elapsed:.2f} s, "
          f"{per_char:.1f} characters tokenized per character")
    assert_line_plan_is_sound(line, batches, flavor)


def test_cutting_by_characters_keeps_its_guarantees():
    """Each piece is the longest prefix that fits (a tokenizer that counts one token per 2 bytes
    grows with every character, so the longest is well defined), nothing lost or repeated."""
    tok = BytePairsTokenizer()
    for size in (1, 2, 7, 1000):
        for room in (1, 2, 5, 40):
            word = spaceless(size) + "é" * (size // 3)
            pieces = split_text(word, tok, room)
            assert "".join(pieces) == word
            assert all(tok.count(p) <= room for p in pieces)
            assert all(tok.count(p + nxt[0]) > room for p, nxt in zip(pieces, pieces[1:]))

