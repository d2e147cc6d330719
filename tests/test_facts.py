"""app/pipeline/facts.py: the figures and names of an answer line that its source does not hold."""
import unicodedata
from decimal import Decimal

import pytest

from app.pipeline import facts
from app.pipeline.facts import Source, unsupported_figures, unsupported_names

# --- figures in digits --------------------------------------------------------------------------

DIGITS = ["3 300 000", "3\u202f300\u202f000", "3\u00a0300\u00a0000", "3.300.000", "3,300,000", "3300000",
          "3,3 millions", "3.3 million", "3,3 M€"]


@pytest.mark.parametrize("said", [*DIGITS, "trois millions trois cent mille", "3,3 Millions"])
@pytest.mark.parametrize("written", DIGITS)
def test_a_figure_is_supported_whatever_the_spelling_on_either_side(said, written):
    assert unsupported_figures(f"Il y a {written} chômeurs.", Source(f"M. X : {said} chômeurs.")) == []


def test_a_figure_is_not_supported_by_another_number():
    source = Source("M. X : 3 300 chômeurs, trois cent mille euros.")
    assert unsupported_figures("Il y a 3 300 000 chômeurs et 300 000 euros.", source) == ["3 300 000"]


def test_figures_as_written_with_their_values():
    text = "Le 1er mai, 12,5 % des 48 173 votants ; 2e tour le 12/03/2024, 1,500 voix et 2 milliards."
    assert facts.figures(text) == [
        ("1er", {1}), ("12,5 %", {Decimal("12.5")}), ("48 173", {48173}), ("2e", {2}), ("12", {12}),
        ("03", {3}), ("2024", {2024}), ("1,500", {1500, Decimal("1.5")}), ("2 milliards", {2, 2 * 10**9})]


def test_an_unsupported_figure_is_reported_as_written_in_order_once():
    line = "Le taux passe à 12,5 % puis 40\u202f000 emplois, 3,3 millions et encore 12,5 %."
    assert unsupported_figures(line, Source("rien de chiffré")) == ["12,5 %", "40\u202f000", "3,3 millions"]
    # "3,3 millions" is 3.3 or 3,300,000: either value in the source supports it.
    assert unsupported_figures(line, Source("12.5 pour cent, 40 000 et 3300000")) == []
    assert unsupported_figures(line, Source("12,5 et 40000 et 3,3")) == []


def test_list_markers_and_figures_glued_to_letters_are_not_figures():
    lines = "1. La COP21 et le G7.\n2) Les M6 et A380.\n  3. Rien."
    assert facts.figures(lines) == []
    assert unsupported_figures("1. Il cite 48 173 votants.", Source("48173")) == []


def test_ordinals_and_dates_count_as_their_numbers():
    line = "Le 1er et le 2e tour, 21st, 1re, 3ème ; séance du 12/03/2024."
    assert unsupported_figures(line, Source("1, 2, 21, 3, le 12 mars 2024")) == []
    assert unsupported_figures(line, Source("le 12 2024")) == ["1er", "2e", "21st", "1re", "3ème", "03"]


# --- numbers in words ---------------------------------------------------------------------------

@pytest.mark.parametrize("said, values", [
    ("trois millions trois cent mille", {3300000}),
    ("quarante-huit mille cent soixante-treize", {48173}),
    ("soixante-dix", {70}),
    ("soixante-dix-sept", {77}),
    ("quatre-vingt-dix-sept", {97}),
    ("quatre-vingts", {80}),
    ("quatre-vingt-un", {81}),
    ("cent quatre-vingts", {180}),
    ("vingt et un", {21}),
    ("vingt-et-un", {21}),
    ("soixante et onze", {71}),
    ("mille et une nuits", {1001}),
    ("deux cent cinquante", {250}),
    ("deux cents", {200}),
    ("deux cent mille", {200000}),
    ("cent un", {101}),
    ("dix-sept", {17}),
    ("mil neuf cent quatre-vingt-quinze", {1995}),
    ("deux mille vingt-quatre", {2024}),
    ("deux milliards", {2 * 10**9}),
    ("septante-cinq", {75}),
    ("Quatre-Vingt-Dix", {90}),
    ("zéro", {0}),
    ("un", {1}),
    ("one hundred and twenty", {120}),
    ("twelve thousand", {12000}),
    ("a million", {10**6}),
    ("a hundred", {100}),
    ("two hundred and fifty thousand", {250000}),
    ("one thousand and five", {1005}),
    ("twenty-one", {21}),
    ("nineteen hundred", {1900}),
    # Where one number ends and the next begins.
    ("entre mille et deux mille", {1000, 2000}),
    ("between one hundred and two hundred", {100, 200}),
    ("un deux trois", {1, 2, 3}),
    ("vingt, deux", {20, 2}),
    ("trois et quatre", {3, 4}),
    ("nineteen eighty-four", {19, 84}),
    ("deux cents\ntrois", {200, 3}),
])
def test_number_words_in_a_source(said, values):
    assert Source(said).numbers == values


def test_month_names_give_their_number():
    assert {3, 12} <= Source("le douze mars").numbers and 12 in Source("December").numbers


def test_a_figure_said_in_words_supports_its_digits_but_words_in_a_line_are_not_figures():
    source = Source("M. DURAND : quarante-huit mille cent soixante-treize votants,",
                    "MME DUPONT : quatre-vingt-dix-sept pour cent, vingt et un sièges et trois millions.")
    assert unsupported_figures("Il cite 48 173 votants, 97 %, 21 sièges et 3 millions.", source) == []
    assert unsupported_figures("Il cite 22 sièges.", source) == ["22"]
    assert unsupported_figures("Il en cite trois, un seul compte.", Source("rien")) == []


# --- names --------------------------------------------------------------------------------------

def test_names_as_written_skip_sentence_starts_titles_and_addresses():
    text = ("Dans ce débat, M. Chirac répond à Lionel Jospin. Il parle de l'État.\n"
            "- Le chômage selon Mme Le Pen et Monsieur Bayrou : **Selon** elle, Jean-Baptiste Inventé ment.")
    assert facts.names(text) == ["Chirac", "Lionel Jospin", "État", "Le Pen", "Bayrou", "Jean-Baptiste Inventé"]
    assert facts.names("Il cite la COP21, Saint-Germain-des-Prés et Dr. House.") == [
        "COP21", "Saint-Germain-des-Prés", "House"]


def test_an_unsupported_name_is_reported_as_written_in_order_once():
    source = Source("M. DURAND : l'Etat doit agir.", "MME MARTIN : Jean-Baptiste a raison, la COP21 aussi.")
    line = ("Selon lui, l'État et Jean-Baptiste Inventé, puis M. Durand, Mme Le Pen, Martin, la COP21 "
            "et encore Jean-Baptiste Inventé.")
    assert unsupported_names(line, source) == ["Jean-Baptiste Inventé", "Le Pen"]


def test_names_compare_without_case_or_accents():
    assert unsupported_names("Il parle de l'État.", Source("L'ETAT doit agir")) == []
    assert unsupported_names("Il parle de l'Etat.", Source("l'État doit agir")) == []
    decomposed = unicodedata.normalize("NFD", "Il parle de l'État et de Noël.")
    assert unsupported_names(decomposed, Source("l'etat, noel")) == []
    assert unsupported_names("Il cite M. Chirac.", Source("rien")) == ["Chirac"]
    assert unsupported_names("Dupont parle. Martin répond : Oui.", Source("rien")) == []


def test_a_hyphenated_name_is_one_name_supported_word_by_word():
    assert facts.names("Il cite Jean-Baptiste.") == ["Jean-Baptiste"]
    assert unsupported_names("Il cite Jean-Baptiste.", Source("Jean et Baptiste")) == []
    assert unsupported_names("Il cite Jean-Baptiste.", Source("Jean")) == ["Jean-Baptiste"]


# --- a whole batch ------------------------------------------------------------------------------
# (what the checks cost per batch is measured in scripts/bench.py, row V1, never asserted here)

def french_batch(words: int = 3000) -> tuple[list[str], list[str]]:
    """~`words` words of rendered turns ("Speaker : text"), with figures in digits and words, and a summary."""
    sentence = ("M. DURAND : Le gouvernement de Jean-Baptiste Martin a présenté le 12/03/2024 un plan de "
                "trois millions trois cent mille euros pour les quarante-huit mille cent soixante-treize "
                "communes, soit 12,5 % du budget de l'État ; la région Île-de-France en reçoit un quart.")
    turns = [sentence.replace("DURAND", f"DURAND{i % 7}") for i in range(words // len(sentence.split()) + 1)]
    answer = ["- M. Durand : le plan de 3,3 millions d'euros de Jean-Baptiste Martin couvre 48 173 communes "
              "(12,5 %), dont 40 000 en Île-de-France selon Mme Inventé."] * 30
    return turns, answer


def test_a_batch_of_3000_words_names_only_what_it_does_not_hold():
    turns, answer = french_batch()
    source = Source(*turns)
    found = [(unsupported_figures(line, source), unsupported_names(line, source)) for line in answer]
    assert found == [(["40 000"], ["Inventé"])] * 30
