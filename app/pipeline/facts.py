"""The figures and names of a text, and whether a source text holds them (CPU only, no I/O).

An engine answer is checked against what it was given: `Source(*texts)` reads the batch's turns and
its context once; `unsupported_figures(line, source)` and `unsupported_names(line, source)` then list
what a line of the answer claims that the source nowhere says. app/eval/metrics.py measures the
same support over whole summaries with these functions.

Figures. A number written in digits, in any of the usual spellings ("3 300 000" with a space, a
no-break or a thin space, "3.300.000", "3,300,000", "12,5", "12.5"), with what may follow it: a scale
word ("3,3 millions", "2 milliards", "1.5 million", "25 k€", "4 Md€"), which adds the full value to
the plain one; a percent sign ("12,5 %" is 12.5); an ordinal ending ("1er", "2e", "21st"), which is
the number itself. A date "12/03/2024" is its three numbers. A number glued after letters
("COP21") is part of a name; a "1. " or "2) " starting a line numbers a list.
One group after a point or a comma ("3.300", "1,500") is thousands in one language and a decimal
part in the other: both readings stand.

A source also says numbers in words, French and English, up to the milliards/billions: "trois
millions trois cent mille", "quatre-vingt-dix-sept", "soixante et onze", "mil neuf cent",
"deux cents", "one hundred and twenty", "a million" (Belgian and Swiss "septante", "huitante",
"octante", "nonante" too), and month names give their number ("mars" is 3). Words are read on the
source side only: a lone "un", "une", "one" is the value 1, harmless there (it only makes a "1"
supported) but far too common to check in an answer, so an answer's numbers are its digits.

Not recognised (said that way in a source, a number does not support its digits in an answer):
- numbers in words in an answer: they are not checked at all (see above);
- decimal numbers in words ("douze virgule cinq", "three point five"), fractions ("un tiers",
  "trois quarts", "a half", "demi"), and approximate nouns ("une dizaine", "une centaine",
  "des milliers", "a dozen");
- ordinal words ("deuxième", "vingtième", "first", "third") and Roman numerals ("XXIe siècle");
- years said as two numbers ("nineteen eighty-four" is 19 and 84) and the French "billion" as
  10^12 (read as the English 10^9);
- dates with points ("12.03.2024" is 12.03 and 2024; "12/03/2024" and "2024-03-12" are read);
- negative signs (a "-5" is 5), times ("10h30" is 10; the 30, glued to a letter, is not read) and
  number words run together without spaces or hyphens.

Names. The capitalised words of a line, except a sentence's first word (capitalised whatever it
is: "Dans", "Il"), a single letter, and titles and forms of address ("M.", "Mme", "Monsieur").
Consecutive capitalised words form one name as written ("Jean-Baptiste Inventé", "Le Pen"); a name
is supported when each of its words is a word of the source, compared without case or accents
(transcripts write "M. DURAND" and "l'Etat" for "l'État").
"""
from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

# --- text folding -----------------------------------------------------------------------------

# The combining diacritical blocks: after NFD, an accent is one of these after its letter. A
# regular expression removes them at C speed; unicodedata.combining() over every character of a
# 3,000-word batch would cost more than everything else here together.
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")
LETTERS = re.compile(r"[^\W\d_]+")


def unaccented(text: str) -> str:
    """`text` without its accents: "état" → "etat", "Œuvre" keeps its "Œ" (a letter, not an accent)."""
    return _ACCENTS.sub("", unicodedata.normalize("NFD", text))


def folded_words(text: str) -> set[str]:
    """The words of `text` (runs of letters: "COP21" gives "cop"), lower-cased and without accents:
    how a source and a name are compared."""
    # NFC first: in a decomposed "é" the accent is no letter and would cut the word.
    return _unaccented_words(LETTERS.findall(unicodedata.normalize("NFC", text).lower()))


def _unaccented_words(words: list[str]) -> set[str]:
    # Accents are removed from distinct non-ASCII words only: much cheaper than from a whole text.
    return {word if word.isascii() else unaccented(word) for word in set(words)}


# --- figures in digits ------------------------------------------------------------------------

_SPACE = "[ \u00a0\u202f\u2009]"   # between digit groups: space, no-break space, thin spaces
_SCALE_WORDS = {"mille": 1000, "thousand": 1000, "thousands": 1000, "million": 10**6, "millions": 10**6,
                "milliard": 10**9, "milliards": 10**9, "billion": 10**9, "billions": 10**9}
# Abbreviations, case-sensitive: "3 m" is three metres, "3 M€" three millions.
_SCALE_SHORT = {"k": 1000, "K": 1000, "M": 10**6, "Mio": 10**6, "Mn": 10**6, "Md": 10**9, "Mds": 10**9,
                "Mrd": 10**9, "Mrds": 10**9, "bn": 10**9}

# A grouped number is 1–3 digits then groups of exactly 3 digits, each after the same separator
# ("3 300 000", "3.300.000", "1,500"), with an optional decimal part ("3 300,5"); any other number is
# digits with an optional decimal part ("12,5", "12.5", "2022"). Then an ordinal ending, a percent
# sign or a scale word may follow; they are part of the number as written. The pattern opens with
# a digit lookahead so the engine skips ahead to digits (a lookbehind first is tried everywhere).
NUMBER = re.compile(
    r"(?=\d)(?<!\w)(?:"
    rf"(?P<head>\d{{1,3}})(?P<sep>{_SPACE}|[.,])(?P<groups>\d{{3}}(?:(?P=sep)\d{{3}})*)(?:[.,](?P<tail>\d+))?"
    r"|(?P<whole>\d+)(?:[.,](?P<fraction>\d+))?"
    r")(?!\d)(?:"
    r"(?:ers?|res?|ères?|èmes?|ièmes?|emes?|es?|ᵉʳ|ᵉ|ʳᵉ|nde?s?|st|rd|th)(?!\w)"
    rf"|{_SPACE}?%"
    rf"|{_SPACE}?(?P<scale>(?i:{'|'.join(sorted(_SCALE_WORDS, key=len, reverse=True))})"
    rf"|{'|'.join(sorted(_SCALE_SHORT, key=len, reverse=True))})(?!\w)"
    r")?")
# "1. " or "2) " starting a line numbers a list: layout, not a claim to check.
LIST_MARKER = re.compile(r"^(\s*)\d+[.)](?=\s)", re.MULTILINE)


def _number(whole: str, fraction: str | None) -> Decimal:
    # Decimals compare and hash by value: "12.50" and "12.5" are one figure, "02" and "2" too.
    return Decimal(f"{whole}.{fraction}" if fraction else whole)


def readings(match: re.Match) -> frozenset[Decimal]:
    """The values a number matched by NUMBER may mean."""
    if not match["sep"]:
        values = {_number(match["whole"], match["fraction"])}
    else:
        values = {_number(match["head"] + match["groups"].replace(match["sep"], ""), match["tail"])}
        # "3.300" or "1,500": thousands, or a decimal part (see the module docstring).
        if match["sep"] in ".," and len(match["groups"]) == 3 and not match["tail"]:
            values.add(_number(match["head"], match["groups"]))
    scale = match["scale"]
    if scale:
        factor = _SCALE_SHORT.get(scale) or _SCALE_WORDS[scale.lower()]
        values |= {value * factor for value in values}
    return frozenset(values)


def figures(text: str) -> list[tuple[str, frozenset[Decimal]]]:
    """The numbers written in digits in `text`, in order: (as written, the values it may mean)."""
    text = LIST_MARKER.sub(r"\1", unicodedata.normalize("NFC", text))
    return [(match.group(), readings(match)) for match in NUMBER.finditer(text)]


# --- numbers in words (read in sources only) --------------------------------------------------

_WORD_VALUES = {
    "zero": 0, "zéro": 0, "un": 1, "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "six": 6, "sept": 7,
    "huit": 8, "neuf": 9, "dix": 10, "onze": 11, "douze": 12, "treize": 13, "quatorze": 14, "quinze": 15,
    "seize": 16, "vingt": 20, "vingts": 20, "trente": 30, "quarante": 40, "cinquante": 50, "soixante": 60,
    "septante": 70, "huitante": 80, "octante": 80, "nonante": 90, "cent": 100, "cents": 100,
    "mil": 1000, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "hundreds": 100, **_SCALE_WORDS}
_MONTHS = {name: number for number, names in enumerate((
    ("janvier", "january"), ("fevrier", "february"), ("mars", "march"), ("avril", "april"), ("mai", "may"),
    ("juin", "june"), ("juillet", "july"), ("aout", "august"), ("septembre", "september"),
    ("octobre", "october"), ("novembre", "november"), ("decembre", "december")), 1) for name in names}
_CONNECTORS = {"et", "and"}
_WORD_SEP = r"[-\u2010\u2011 \u00a0\u202f\u2009\t]+"    # within a number: spaces and hyphens, no newline


def _alternation(words: list[str]) -> str:
    """A pattern matching any of `words`, factored by first letter ("c(?:ent(?:s)?|inq(?:uante)?)"):
    at each word start the engine tries the one branch of its letter, not all 90 words in turn."""
    branches = []
    for first in sorted({word[0] for word in words}):
        rests = [word[1:] for word in words if word[0] == first]
        longer = [rest for rest in rests if rest]
        optional = "?" if len(longer) < len(rests) else ""
        branches.append(f"{first}(?:{_alternation(longer)}){optional}" if longer else first)
    return "|".join(branches)


_ANY_NUMBER_WORD = _alternation(list(_WORD_VALUES))
_FIRST_LETTERS = "".join(sorted({word[0] for word in _WORD_VALUES} | {"a"}))
# A run of number words (in lower-cased text), joined by "et"/"and"; "a"/"an" counts as one before
# an English scale ("a hundred", "a million"). The parser below splits a run into its numbers. The
# first-letter lookahead lets most words fail at once.
NUMBER_WORDS = re.compile(
    rf"\b(?=[{_FIRST_LETTERS}])(?:an?{_WORD_SEP}(?=(?:hundred|thousand|million|billion)))?(?:{_ANY_NUMBER_WORD})\b"
    rf"(?:{_WORD_SEP}(?:(?:et|and){_WORD_SEP})?(?:{_ANY_NUMBER_WORD})\b)*")
_SPLIT_WORDS = re.compile(_WORD_SEP)


def _follows(previous: int, value: int, current: int, smallest_scale: float) -> bool:
    """Whether number word `value` continues a number whose last word was `previous`, with `current`
    below its smallest scale so far (2 in "trois millions deux"): else it starts another number."""
    if value == 0 or previous == 0:
        return False
    if value >= 1000:                             # a scale: smaller than the number's previous one
        return value < smallest_scale
    if value == 100:                              # "deux cents", "mille cent", "nineteen hundred"
        return current < 100
    below = current % 100
    if value == 20 and previous == 4 and below == 4:
        return True                               # "quatre-vingts" is 4 × 20
    if value >= 20:                               # tens after a hundred or a scale: "cent vingt"
        return below == 0
    if value >= 10:                               # "soixante-dix", "quatre-vingt-onze", "cent douze"
        return below in (0, 60, 80)
    # Units: "cent un", "vingt-deux", "twenty one", and "dix-sept" up to "dix-neuf" (also in 77, 97).
    return below == 0 or (below >= 20 and below % 10 == 0) or (previous == 10 and value >= 7)


def _parse(values: list[int]) -> list[int]:
    """The numbers a sequence of number-word values says: [3, 10**6, 3, 100, 1000] → [3300000]."""
    numbers = []
    total = current = 0           # total: the part counted in scales; current: the part below them
    smallest_scale: float = float("inf")
    previous = None
    for value in values:
        if previous is not None and not _follows(previous, value, current, smallest_scale):
            numbers.append(total + current)
            total = current = 0
            smallest_scale = float("inf")
        if value >= 1000:
            total += (current or 1) * value
            current = 0
            smallest_scale = value
        elif value == 100:
            current = (current or 1) * 100
        elif value == 20 and previous == 4 and current % 100 == 4:
            current += 76          # "quatre" was counted as 4: 4 + 76 = 4 × 20
        else:
            current += value
        previous = value
    if previous is not None:
        numbers.append(total + current)
    return numbers


def _joins(connector: str, before: list[int], after: list[int]) -> bool:
    """Whether "et"/"and" joins two parts into one number ("vingt et un", "mille et un", "one hundred
    and twenty") rather than separating two numbers ("entre mille et deux mille")."""
    if connector == "et":
        fits = before[-1] in (20, 30, 40, 50, 60, 1000) and after[0] in (1, 11)
    else:
        fits = before[-1] == 100 or before[-1] >= 1000
    # And the second part must not start a number of its own ("one hundred and two hundred").
    return fits and len(_parse(before + after)) == len(_parse(before))


def word_numbers(run: str) -> list[int]:
    """The numbers a run of number words matched by NUMBER_WORDS says."""
    words = _SPLIT_WORDS.split(run)
    if len(words) == 1:                           # most runs: a lone "un", "une", "deux"
        return [_WORD_VALUES[words[0]]]
    parts: list[list[int]] = [[]]                 # the values between connectors
    connectors = []
    for word in words:
        if word in _CONNECTORS:
            connectors.append(word)
            parts.append([])
        else:
            parts[-1].append(1 if word in ("a", "an") else _WORD_VALUES[word])
    numbers: list[int] = []
    joined = parts[0]
    for connector, part in zip(connectors, parts[1:]):
        if _joins(connector, joined, part):
            joined = joined + part
        else:
            numbers += _parse(joined)
            joined = part
    return numbers + _parse(joined)


# --- names ------------------------------------------------------------------------------------

# A word for names: starts with a letter, may hold digits ("COP21"), hyphenated parts are one word
# ("Jean-Baptiste", "Saint-Germain-des-Prés").
_NAME_WORD = re.compile(r"[^\W\d_]\w*(?:[-\u2010\u2011][^\W\d_]\w*)*")
_NAME_GAP = {" ", "\u00a0", "\u202f", "\u2009"}   # what may separate two words of one name
# What may stand between a sentence's end and its first word: spaces, markdown, quotes, dashes, bullets.
OPENERS = " \t*_#>-–—•\"«“‘'(["
SENTENCE_END = tuple(".!?:…")
# Abbreviations ending in "." that come before a name, not at the end of a sentence ("M. Chirac").
TITLES = {"m", "mm", "mme", "mmes", "mlle", "me", "dr", "pr", "mr", "mrs", "ms", "st"}
# Capitalised before a name, but a form of address, not a name.
ADDRESSES = TITLES | {"monsieur", "madame", "mademoiselle", "messieurs", "mesdames"}
_LAST_WORD = re.compile(r"([^\W\d_]+)\.$")


def starts_sentence(before: str) -> bool:
    """Whether a word with `before` to its left on its line begins a sentence (or a list item)."""
    before = before.rstrip(OPENERS)
    if not before:
        return True
    if not before.endswith(SENTENCE_END):
        return False
    title = _LAST_WORD.search(before)
    return not (title and (title[1].lower() in TITLES or (len(title[1]) == 1 and title[1].isupper())))


def names(text: str) -> list[str]:
    """The names of `text` as written, in order, without duplicates (see the module docstring)."""
    found: dict[str, None] = {}
    for line in unicodedata.normalize("NFC", text).splitlines():
        start = end = -1                          # the name being read, as a slice of the line
        for match in _NAME_WORD.finditer(line):
            word = match.group()
            if (len(word) > 1 and word[0].isupper() and word.lower() not in ADDRESSES
                    and not starts_sentence(line[:match.start()])):
                if start >= 0 and line[end:match.start()] in _NAME_GAP:
                    end = match.end()             # one more word of the same name
                    continue
                if start >= 0:
                    found[line[start:end]] = None
                start, end = match.span()
            elif start >= 0:
                found[line[start:end]] = None
                start = -1
        if start >= 0:
            found[line[start:end]] = None
    return list(found)


# --- the source and the checks ----------------------------------------------------------------

class Source:
    """What an answer may draw on: the batch's rendered turns ("Speaker : text" lines) and the context it was given.

    Built once per batch: `numbers` holds every value the texts say (in digits, in words, month
    names; a list marker counts too: a source that numbers things only supports more), `words`
    every word, folded (lower-cased, unaccented, letters only: "COP21" gives "cop").
    """

    __slots__ = ("numbers", "words")

    def __init__(self, *texts: str):
        text = unicodedata.normalize("NFC", "\n".join(texts))
        numbers: set[Decimal | int] = set()
        for match in NUMBER.finditer(text):
            numbers |= readings(match)
        lower = text.lower()
        for match in NUMBER_WORDS.finditer(lower):
            numbers.update(word_numbers(match.group()))
        self.words = frozenset(_unaccented_words(LETTERS.findall(lower)))
        numbers.update(_MONTHS[month] for month in self.words & _MONTHS.keys())
        # An int and a Decimal of the same value are equal and hash alike: both kinds can be looked up.
        self.numbers = frozenset(numbers)

    def holds(self, name: str) -> bool:
        """Whether every word of `name` is a word of the source."""
        return folded_words(name) <= self.words


def unsupported_figures(line: str, source: Source) -> list[str]:
    """The numbers of `line`, as written ("48 173", "12,5 %", "3,3 millions"), none of whose values the
    source says; in order, without duplicates."""
    return list(dict.fromkeys(written for written, values in figures(line) if values.isdisjoint(source.numbers)))


def unsupported_names(line: str, source: Source) -> list[str]:
    """The names of `line`, as written, with a word the source does not have; in order, without duplicates."""
    return [name for name in names(line) if not source.holds(name)]
