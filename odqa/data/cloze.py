"""Cloze-style synthetic QA from a corpus (Lewis et al., 2019, "Unsupervised Question Answering
by Cloze Translation"), the training data for the re-ranker and the reader's soft prompt.

A sentence of a lead paragraph has one span masked: a date, a number or a proper-noun phrase.
The span is the answer; the sentence, with the span replaced by a wh-phrase chosen by its type
(Lewis et al.'s "identity mapping" plus a wh-word, without wh-movement), is the question::

    Penicillin was discovered by Alexander Fleming in 1928 at St Mary's Hospital in London.
    -> "Penicillin was discovered by Alexander Fleming in what year at St Mary's Hospital in London?"  1928

A sentence that opens with a pronoun gets the article's title instead, so it stands alone.
Everything is regular expressions and small word lists: no tagger, no nltk, no spaCy. The
output is labelled synthetic everywhere (``synthetic=True``, ``source="cloze:..."``, and the
file names the CLI writes).

    >>> examples = make_cloze(read_corpus("wiki-vital"), n=4000, corpus_name="wiki-vital")
    >>> train = [e for e in examples if cloze_split(e) == "train"]
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, replace

from odqa.data.corpus import Passage
from odqa.metrics import has_answer
from odqa.data.negatives import Ctx, TrainExample

KINDS = ("DATE", "NUMBER", "ENTITY")
MAX_TYPE_SHARE = 0.5  # no answer type above half of the examples
TITLE_ANSWER_KEEP = 0.5  # share of title-as-answer candidates kept: questions should usually name the subject
DEV_SHARE = 10  # one passage in DEV_SHARE goes to dev

# --- sentences ---------------------------------------------------------------------------------
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep",
    "rev", "mt", "ft", "fr", "no", "nos", "vs", "etc", "approx", "ca", "c", "inc", "ltd", "co", "corp", "dept",
    "est", "fig", "vol", "op", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "e.g", "i.e", "u.s", "u.k", "u.n", "a.d", "b.c", "d.c", "al",
}
# a candidate boundary: terminal punctuation (plus closing quotes/brackets), space, an opening char
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*\s+(?=[\"“'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences without breaking after abbreviations or initials.

    A period ends a sentence unless the word before it is a known abbreviation ("St.", "Dr.",
    "U.S."), a single capital (an initial, "J. R. R. Tolkien") or a dotted acronym.
    """
    sentences: list[str] = []
    for block in text.split("\n"):
        start = 0
        for m in _BOUNDARY.finditer(block):
            if block[m.start()] == ".":
                word = re.search(r"(\S+)$", block[start:m.start()])
                w = word.group(1).lstrip("\"'“(") if word else ""
                if (w.lower().rstrip(".") in _ABBREVIATIONS or re.fullmatch(r"[A-Z]", w)
                        or re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", w)):
                    continue
            sentences.append(block[start:m.end()].strip())
            start = m.end()
        if block[start:].strip():
            sentences.append(block[start:].strip())
    return sentences


def _balanced(s: str) -> bool:
    return (s.count("(") == s.count(")") and s.count("[") == s.count("]") and s.count('"') % 2 == 0
            and s.count("“") == s.count("”"))


# removed formulas and pronunciations leave "  ", " ,", " ." or "()" behind in Wikipedia extracts, and
# lost superscripts turn "10²³" into "1023" ("6.02214076×1023", "2.5 X 106 km2")
_DAMAGED = re.compile(r"\s{2,}|\s[,.;:)]|\(\s|\(\)|\[\]|×|\d\s?[xX]\s?10\d")


def _usable(sentence: str) -> bool:
    return (_balanced(sentence) and not _DAMAGED.search(sentence) and sentence[-1:] == "."
            and "?" not in sentence and "!" not in sentence and 6 <= len(sentence.split()) <= 45)


# --- answer candidates -------------------------------------------------------------------------
MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December")
_MONTH_SET = set(MONTHS.split("|"))
_ERAS = {"BC", "BCE", "AD", "CE"}
_YEAR = r"(?:1\d{3}|20\d{2})"
_ERA = r"(?:\s?(?:BC|BCE|AD|CE)\b)"
_DATE = re.compile(
    rf"(?P<full>(?:{MONTHS})\s\d{{1,2}},\s{_YEAR}|\d{{1,2}}\s(?:{MONTHS})\s{_YEAR}|(?:{MONTHS})\s{_YEAR})"
    rf"|(?P<century>\d{{1,2}}(?:st|nd|rd|th)[\s-]century(?:\s(?:BC|BCE|AD|CE))?)"
    rf"|(?P<decade>(?:1\d{{2}}|20\d)0s)"
    rf"|(?P<year>(?<![\w,.\-–/])(?:{_YEAR}{_ERA}?|\d{{1,4}}{_ERA})(?![\w\-–/]|,\d))"
)
_SCALE = r"(?:hundred|thousand|million|billion|trillion)"
_COUNT_WORDS = {"hundred", "thousand", "million", "billion", "trillion", "people", "species", "km", "metres", "meters",
                "m", "miles", "feet", "years", "inhabitants", "residents", "men", "soldiers", "copies", "units"}
_UNITS = (
    "km|kilometres|kilometers|kilometre|kilometer|m|metres|meters|metre|meter|cm|mm|mi|miles|mile|ft|feet|foot|"
    "inches|kg|kilograms|g|grams|tonnes|tons|lb|pounds|km2|sq mi|square kilometres|square kilometers|"
    "square miles|hectares|acres|°C|°F|degrees|K|km/h|mph|litres|liters|MW|GW|kW|AU|light-years|light years"
)
_NUMBER = re.compile(
    rf"(?<![\w.,\-–/])(?P<num>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    rf"(?P<scale>\s{_SCALE})?"
    rf"(?P<unit>\s?(?:%|percent|per cent)|\s(?:{_UNITS})(?![\w/]))?"
    rf"(?![\w\-–/]|[.,]\d)"
)
_WORD_NUMBERS = ("two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                 "sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety")
_WORD_NUMBER = re.compile(rf"\b(?P<num>(?:{_WORD_NUMBERS})(?:[\s-](?:one|two|three|four|five|six|seven|eight|nine)"
                          rf"\b)?)(?P<scale>\s{_SCALE})?(?=\s[a-z])")

# words that may sit inside a proper-noun phrase ("Leonardo da Vinci", "Bank of England")
_CONNECTORS = {"of", "the", "de", "and", "da", "van", "von", "del", "du", "der", "la", "le", "di", "y", "al"}
# capitalised only because they open a sentence
_FUNCTION_CAPS = {
    "The", "A", "An", "In", "On", "At", "It", "He", "She", "They", "We", "I", "This", "These", "Those", "That",
    "There", "His", "Her", "Its", "Their", "As", "After", "Before", "During", "For", "From", "By", "With",
    "Although", "Though", "While", "When", "Since", "However", "Many", "Some", "Most", "Other", "Both", "Each",
    "Other", "Such", "Unlike", "Like", "If", "But", "And", "Or", "Because", "Despite", "Following", "Under",
    "Over", "Through", "Today", "Also", "Several", "All", "Among", "Between", "Within", "According", "Until",
    "Upon", "Once", "Later", "Early", "Originally", "Modern", "Although", "Where", "Which", "What", "Who",
    "One", "Two", "Three", "Its", "Throughout", "Around", "About", "Besides", "Here", "Not", "Only", "Because",
}
_PRONOUNS = {"It": "", "He": "", "She": "", "They": "", "Its": "'s", "His": "'s", "Her": "'s", "Their": "'s"}
# "The city is ..." -> "<title> is ..."
_GENERIC_HEADS = {
    "city", "country", "town", "village", "state", "region", "province", "island", "river", "lake", "mountain",
    "company", "band", "group", "species", "genus", "family", "film", "novel", "book", "album", "song", "game",
    "language", "planet", "empire", "kingdom", "war", "battle", "building", "church", "university", "party",
    "team", "club", "series", "show", "play", "painting", "work", "disease", "organization", "organisation",
    "term", "word", "sport", "dynasty", "festival", "capital", "nation", "republic", "ship", "instrument",
}
_LANGUAGES = {"English", "French", "German", "Latin", "Greek", "Spanish", "Italian", "Arabic", "Chinese",
              "Japanese", "Russian", "Portuguese", "Hebrew", "Sanskrit", "Dutch", "Persian", "Hindi", "Korean"}
# the words that make a capitalised phrase a place or an organisation, not a person
_NOT_PERSON = {
    "University", "River", "Mountain", "Mountains", "Mount", "Lake", "Ocean", "Sea", "Island", "Islands", "Kingdom",
    "Republic", "Empire", "State", "States", "City", "Church", "Company", "Party", "War", "Army", "Hospital",
    "Museum", "School", "College", "Street", "Park", "Bay", "Valley", "Desert", "Nations", "Union", "Council",
    "Court", "Bank", "Club", "Society", "Institute", "Association", "Award", "Awards", "Prize", "Games", "Cup",
    "League", "Age", "Revolution", "Act", "Treaty", "Symphony", "Bible", "Church", "Cathedral", "Palace", "Basin",
    "Range", "Peninsula", "Coast", "Gulf", "Channel", "Canal", "Province", "County", "Region", "Dynasty",
    "Agency", "Organization", "Organisation", "Corporation", "Records", "Festival", "Theatre", "Theater", "Hall",
    "Square", "Tower", "Bridge", "Airport", "Station", "Road", "Wall", "Government", "Parliament", "Congress",
    "Senate", "Ministry", "Department", "System", "Series", "Award", "Studios", "Pictures", "Broadcasting",
    "Europe", "Asia", "Africa", "America", "Americas", "Australia", "Antarctica", "Atlantic", "Pacific",
    "Middle", "East", "West", "North", "South", "New", "Central", "Upper", "Lower", "Great", "Saint", "St", "San",
    "Santa", "Los", "Las", "Le", "La", "Northern", "Southern", "Eastern", "Western", "United", "Royal", "National",
}
_HONORIFICS = {"Sir", "King", "Queen", "Saint", "Pope", "President", "Emperor", "Prince", "Princess", "Lord",
               "Lady", "General", "Dr.", "Dr", "Mr", "Mrs", "Captain", "Empress", "Tsar", "Sultan", "Duke"}
_PLACE_PREPS = {"in", "at", "on", "near", "within", "throughout", "across", "inside"}
_DATE_PREPS = {"since", "until", "till", "by", "before", "after", "from", "to", "through", "around", "circa"}
# lowercase words after a number that are not the counted noun ("73 of them", "1,500 in total")
_NOT_COUNTED = {
    "of", "and", "or", "in", "to", "is", "was", "are", "were", "by", "for", "on", "at", "as", "with", "from",
    "than", "that", "which", "who", "times", "per", "to", "out", "the", "a", "an", "its", "their", "his", "her",
    "has", "had", "have", "be", "been", "it", "more", "less", "fewer", "but", "so", "when", "where", "into",
}


@dataclass(frozen=True)
class Candidate:
    """A maskable span of a sentence: ``sentence[start:end]`` is replaced by ``wh``; ``answer`` is kept."""

    start: int
    end: int
    answer: str
    kind: str
    wh: str


def _words_before(sentence: str, pos: int, n: int = 1) -> list[str]:
    return re.findall(r"[\w'’]+", sentence[:pos])[-n:]


def _word_after(sentence: str, pos: int) -> str:
    m = re.match(r"\s+([\w'’\-]+)", sentence[pos:])
    return m.group(1) if m else ""


def _prep_span(sentence: str, start: int, preps: set[str]) -> tuple[int, str] | None:
    """If ``sentence[:start]`` ends with one of ``preps`` (and an optional "the"), its start and the prep."""
    m = re.search(r"(?:^|\s)(\w+)\s+(?:the\s+)?$", sentence[:start], flags=re.IGNORECASE)
    if m and m.group(1).lower() in preps:
        return m.start(1), m.group(1)
    return None


def _the_start(sentence: str, start: int) -> int:
    """Extend a span back over a preceding "the"/"a"/"an" (the wh-phrase replaces the article too)."""
    m = re.search(r"(?:^|\s)(the|a|an|The|A|An)\s+$", sentence[:start])
    return m.start(1) if m else start


def _date_candidates(sentence: str) -> list[Candidate]:
    out = []
    for m in _DATE.finditer(sentence):
        start, end, answer = m.start(), m.end(), m.group(0)
        after = _word_after(sentence, end)
        if m.lastgroup == "century":
            early = re.search(r"\b(?:the\s+)?(?:early|mid|late|middle)[\s-]+$", sentence[:start], flags=re.IGNORECASE)
            start = early.start() if early else start  # "the early 18th century" -> "what century"
            start, wh = _the_start(sentence, start), "what century"
        elif m.lastgroup == "decade":
            start, wh = _the_start(sentence, start), "what decade"
        elif m.lastgroup == "year":
            before = _words_before(sentence, start)
            if before and before[0].lower() in ("a", "an", "the", "his", "her", "its", "their") and after[:1].isalpha():
                continue  # "an 1851 novel": the year is an adjective, no clean question
            if after.lower() in _COUNT_WORDS:
                continue  # a count that looks like a year
            if re.search(r"\bthe year\s+$", sentence[:start], flags=re.IGNORECASE):
                start = sentence[:start].lower().rindex("the year")  # "in the year 1896" -> "in what year"
            prep = _prep_span(sentence, start, {"in"} | _DATE_PREPS | {"of", "on"})
            if prep and prep[1].lower() == "in":
                wh = "what year"  # "in 1969" -> "in what year"
            elif prep and prep[1].lower() == "of":
                wh = "what year"
            elif prep:
                start, wh = prep[0], f"{prep[1]} when"
            else:
                wh = "what year"
        else:  # full date
            prep = _prep_span(sentence, start, {"on", "in"} | _DATE_PREPS)
            if prep and prep[1].lower() in ("on", "in"):
                start, wh = prep[0], "when"
            elif prep:
                start, wh = prep[0], f"{prep[1]} when"
            else:
                wh = "what date"
        out.append(Candidate(start, end, answer, "DATE", wh))
    return out


def _number_candidates(sentence: str, taken: list[tuple[int, int]]) -> list[Candidate]:
    out = []
    for rx in (_NUMBER, _WORD_NUMBER):
        for m in rx.finditer(sentence):
            start, end = m.start(), m.end()
            if start == 0 or any(s < end and start < e for s, e in taken):
                continue  # sentence-initial, or part of a date
            before = _words_before(sentence, start)
            if before and before[0][:1].isupper() and before[0] not in _FUNCTION_CAPS:
                continue  # "Apollo 11", "Windows 10": part of a name
            num = m.group("num")
            if rx is _NUMBER and re.fullmatch(r"[01]", num):
                continue
            unit = (m.groupdict().get("unit") or "").strip()
            scale = (m.group("scale") or "").strip()
            after = _word_after(sentence, end)
            if not unit and after in ("percent", "per"):
                continue  # "seventy percent": the unit regex only follows digits
            if unit in ("%", "percent", "per cent"):
                answer, wh = m.group(0), "what percentage"
            elif unit:
                answer, wh = m.group(0), "how much"
            else:
                answer = m.group(0)
                counted = after[:1].islower() and after.lower() not in _NOT_COUNTED and after[:1].isalpha()
                if counted or scale or "," in num:
                    wh = "how many"
                elif rx is _WORD_NUMBER:
                    continue
                elif re.fullmatch(r"\d{3,4}", num) and before and before[0].lower() in _DATE_PREPS | {"in", "of"}:
                    continue  # "from 661 to 750": an early year, not a count
                else:
                    wh = "what number"
            if before and before[0].lower() in ("a", "an") and wh != "how many":
                continue
            if before and before[0].lower() in ("a", "an", "the") and wh == "how many":
                start = _the_start(sentence, start)  # "the five oceans" -> "how many oceans"
            out.append(Candidate(start, end, answer, "NUMBER", wh))
    return out


_TOKEN = re.compile(r"\S+")


def _strip_token(tok: str) -> tuple[int, str, str]:
    """(offset of the core, the core, the trailing punctuation) of a whitespace token."""
    lead = len(tok) - len(tok.lstrip("\"'“‘(["))
    core = tok[lead:]
    stripped = core.rstrip(",;:.\"'”’)]")
    if core.endswith(".") and (re.fullmatch(r"(?:[A-Z]\.){2,}", core) or core[:-1].lower() in _ABBREVIATIONS):
        stripped = core.rstrip(",;:\"'”’)]")  # "U.S.", "St." keep their dot
    return lead, stripped, core[len(stripped):]


def _is_cap(core: str) -> bool:
    return bool(core) and core[0].isupper() and core.rstrip(".") not in _MONTH_SET | _ERAS


def _entity_candidates(sentence: str, passage_text: str, title: str, names: frozenset[str]) -> list[Candidate]:
    toks = [(m.start(), m.group(0)) for m in _TOKEN.finditer(sentence)]
    runs: list[tuple[int, int]] = []  # token index ranges [i, j)
    i = 0
    while i < len(toks):
        lead, core, trail = _strip_token(toks[i][1])
        if not _is_cap(core):
            i += 1
            continue
        j = i + 1
        last_cap = i + 1
        stop = bool(trail)
        while j < len(toks) and not stop:
            lead_j, core_j, trail_j = _strip_token(toks[j][1])
            if lead_j:
                break
            if _is_cap(core_j) or (core_j.isdigit() and len(core_j) <= 3 and j == last_cap):
                last_cap = j + 1
            elif core_j not in _CONNECTORS:
                break
            stop = bool(trail_j)
            j += 1
        runs.append((i, last_cap))
        i = max(last_cap, i + 1)

    out = []
    clean = clean_title(title)
    for i, j in runs:
        if i == 0:
            first = _strip_token(toks[0][1])[1]
            if first in _FUNCTION_CAPS:
                i += 1
                if i >= j:
                    continue
            elif j - i == 1 and not _capitalised_elsewhere(first, passage_text) and first != clean:
                continue  # a common noun that opens the sentence
        while i < j and _strip_token(toks[i][1])[1] in _CONNECTORS:
            i += 1
        if i >= j:
            continue
        words = [_strip_token(t)[1] for _, t in toks[i:j]]
        if words[-1].endswith(("'s", "’s")) or words[-1] in _CONNECTORS:
            continue
        lead = _strip_token(toks[i][1])[0]
        start = toks[i][0] + lead
        last_start, last_tok = toks[j - 1]
        end = last_start + _strip_token(last_tok)[0] + len(words[-1])
        answer = sentence[start:end]
        if len(answer) < 2 or answer.isdigit():
            continue
        if _modifier_without_article(sentence, start, end) or _after_adjective(sentence, start):
            continue
        if re.match(r"\s+to\s+[A-Z]", sentence[end:]) or re.search(r"[A-Z]\w*\s+to\s+$", sentence[:start]):
            continue  # "the Ode to Joy": part of a longer title
        if re.search(r"[A-Z][\w'’\-]*,\s+$", sentence[:start]) and re.match(r"[,.;]|$", sentence[end:]):
            continue  # "Paris, France": the qualifier of a place, masked with it
        out.append(Candidate(start, end, answer, "ENTITY", ""))
    return [w for w in (_entity_wh(sentence, c, passage_text, clean, names) for c in out) if w is not None]


_PREPOSITIONS = {
    "in", "at", "of", "on", "by", "with", "from", "to", "for", "into", "near", "during", "under", "over", "between",
    "about", "after", "before", "like", "as", "across", "through", "within", "without", "than", "against", "among",
}


# words after a name that are not the noun it modifies ("in New York City since 1989")
_NOT_A_HEAD = _NOT_COUNTED | _PREPOSITIONS | {"since", "until", "while", "because", "although", "though", "whereas",
                                              "after", "before", "during", "where", "whose", "whom", "not"}


def _modifier_without_article(sentence: str, start: int, end: int) -> bool:
    """A name used as a modifier after an adjective ("the first United States patent"): masking it
    leaves "the first what patent". With an article or preposition right before it, "what <noun>" reads."""
    nxt = _word_after(sentence, end)
    if not nxt[:1].isalpha() or not nxt[:1].islower() or nxt in _NOT_A_HEAD:
        return False
    before = re.search(r"(\S+)\s+$", sentence[:start])
    if not before or before.group(1)[-1:] in ",;:(":
        return False
    return before.group(1).lower() not in _PREPOSITIONS | {"the", "a", "an", "and", "or"}


def _after_adjective(sentence: str, start: int) -> bool:
    """"the first modern Olympic Games": a name after adjectives of a noun phrase leaves "the first modern what"."""
    before = re.findall(r"[\w'’]+", sentence[:start])[-3:]
    if not before or not before[-1].islower() or before[-1] in _PREPOSITIONS | _NOT_COUNTED:
        return False
    return any(w.lower() in ("the", "a", "an") for w in before[:-1])


def _capitalised_elsewhere(word: str, text: str) -> bool:
    """Is ``word`` capitalised somewhere not at a sentence start (so it is a name, not a common noun)?"""
    for m in re.finditer(rf"\b{re.escape(word)}\b", text):
        if not re.search(r"(?:^|[.!?:;]\s+|\n\s*)[\"'“(]?$", text[: m.start()]):
            return True
    return False


def _says_he_or_she(text: str) -> bool:
    return bool(re.search(r"\b(?:he|she|his|her|him)\b", text, flags=re.IGNORECASE))


def given_names(passages: list[Passage]) -> frozenset[str]:
    """First words of the titles of articles about people (name-shaped titles of articles that say he/she):
    "Neil" from "Neil Armstrong". A name-shaped phrase starting with one is taken to be a person."""
    return frozenset(clean_title(p.title).split()[0] for p in passages
                     if _looks_like_person(clean_title(p.title).split()) and _says_he_or_she(p.text))


def _looks_like_person(words: list[str]) -> bool:
    if "and" in words:
        k = words.index("and")
        return _looks_like_person(words[:k]) and _looks_like_person(words[k + 1:])
    if any(w in _HONORIFICS for w in words):
        return True
    if words and words[0] == "The":
        return False
    names = [w for w in words if w not in {"van", "von", "de", "da", "del", "der", "di", "Jr.", "Sr.", "II", "III"}]
    return (2 <= len(names) <= 4 and all(re.fullmatch(r"[A-Z][a-z]+(?:-[A-Z][a-z]+)?|[A-Z]\.", w) for w in names)
            and not any(w in _NOT_PERSON for w in names) and not any(w in {"of", "the", "and"} for w in words))


_DIRECTIONS = {"northern", "southern", "eastern", "western", "northeastern", "northwestern", "southeastern",
               "southwestern", "central"}


def _entity_wh(sentence: str, c: Candidate, passage_text: str, title: str,
               given_names: frozenset[str]) -> Candidate | None:
    """Choose the wh-phrase for a name by its preposition and shape; None when no phrase reads well."""
    words = c.answer.split()
    if title and c.answer.lower() in title.lower():  # the article's subject: a person if the article says he/she
        person = strong = _says_he_or_she(passage_text)
    else:
        # "strong": evidence beyond the shape of the words, needed before "to whom", "of whom" ...
        strong = (any(w in _HONORIFICS for w in words) or bool(re.match(r",?\s+who\b", sentence[c.end:]))
                  or (words[0] in given_names and _looks_like_person(words)))
        person = strong or _looks_like_person(words)
    start = _the_start(sentence, c.start)
    before = _words_before(sentence, start)
    if before and before[0].lower() in _DIRECTIONS:  # "in northeastern Africa": the adjective goes too
        start = _the_start(sentence, sentence.rindex(before[0], 0, start))
        before = _words_before(sentence, start)
    if before and before[0].lower() in {"called", "named", "as", "titled", "nicknamed"}:
        person = strong = False  # "often called the Red Planet"
    prev = before[0].lower() if before else ""
    prep_start = sentence.rindex(before[0], 0, start) if before else start
    if prev in _PLACE_PREPS and start > 0 and re.match(r"\s+(?:is|was|are|were)\b", sentence[c.end:]):
        return None  # "The Amazon River in South America is ...": a post-modifier of the subject
    if prev == "in" and c.answer in _LANGUAGES:
        return Candidate(start, c.end, c.answer, "ENTITY", "what language")
    modifier = re.match(r"\s+([a-z]+)", sentence[c.end:])
    if modifier and modifier.group(1) not in _NOT_A_HEAD:
        return Candidate(start, c.end, c.answer, "ENTITY", "what")  # "in (the) Catholic theology" -> "in what theology"
    if prev in _PLACE_PREPS and not strong:
        # "in Paris, France" -> "where": the qualifying place goes with the masked one
        more = re.match(r",\s+[A-Z][\w'’\-]*(?:\s+[A-Z][\w'’\-]*)*(?=[,.;]|$)", sentence[c.end:])
        return Candidate(prep_start, c.end + (more.end() if more else 0), c.answer, "ENTITY", "where")
    if prev == "from" and not strong:
        return Candidate(prep_start, c.end, c.answer, "ENTITY", "from where")
    if prev == "by":
        return Candidate(prep_start, c.end, c.answer, "ENTITY", "by whom" if person else "by what")
    if strong and prev == "":  # a subject needs evidence: "Cascading Style Sheets is ..." has a name's shape
        return Candidate(start, c.end, c.answer, "ENTITY", "who")
    if strong and prev in {"with", "to", "for", "of", "than", "against", "like", "and"}:
        return Candidate(start, c.end, c.answer, "ENTITY", "whom" if prev in _PREPOSITIONS else "who")
    # "the Apollo 11 mission" -> "what mission": the article goes with the masked span
    return Candidate(start, c.end, c.answer, "ENTITY", "what")


def candidates(sentence: str, passage_text: str = "", title: str = "",
               names: frozenset[str] = frozenset()) -> list[Candidate]:
    """Every maskable span of ``sentence``: dates first, then numbers outside dates, then names."""
    dates = _date_candidates(sentence)
    # spans that read as dates stay out of the numbers even when no date question was made of them
    taken = [m.span() for m in _DATE.finditer(sentence)]
    numbers = _number_candidates(sentence, taken)
    entities = [c for c in _entity_candidates(sentence, passage_text or sentence, title, names)
                if not any(s <= c.start and c.end <= e for s, e in taken)]
    return dates + numbers + entities


# --- rewriting ---------------------------------------------------------------------------------
def clean_title(title: str) -> str:
    """The title as a sentence would name it: "Python (programming language)" -> "Python"."""
    return re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()


def _drop_parentheticals(text: str) -> str:
    """Remove "( ... )" and "[ ... ]" asides; the masked span is never inside one (checked by the caller)."""
    prev = None
    while prev != text:
        prev = text
        text = re.sub(r"\s*[(\[][^()\[\]]*[)\]]", "", text)
    return text


def _standalone(prefix: str, title: str) -> str | None:
    """Replace an opening pronoun ("It", "His", "The city") by the title; None if it cannot stand alone."""
    if re.match(r"It (?:is|was|has been|had been)(?: \w+){1,2}? (?:that|to|how|whether|what|why|if|when)\b", prefix):
        return None  # "It is believed that ...": no referent to restore
    m = re.match(r"(It|He|She|They|Its|His|Her|Their)\b", prefix)
    if m:
        return title + _PRONOUNS[m.group(1)] + prefix[m.end():]
    # "Further, he was ...", "In 1521, she ...", "Among her accolades ...": a pronoun in the first words
    m = re.match(r"((?:[\w'’]+,? ){1,3})(it|he|she|they|its|his|her|their)\b", prefix)
    if m and title.lower() not in prefix.lower():
        return m.group(1) + title + _PRONOUNS[m.group(2).capitalize()] + prefix[m.end():]
    m = re.match(r"The (\w+)\b", prefix)
    if m and m.group(1) in _GENERIC_HEADS and title.lower() not in prefix.lower():
        return title + prefix[m.end():]
    if re.match(r"(This|These|That|Those|Both|Such)\b", prefix):
        return None
    return prefix


def make_question(sentence: str, c: Candidate, title: str) -> str | None:
    """The question for masking ``c`` in ``sentence``, or None when it would not read as one."""
    prefix, suffix = sentence[: c.start], sentence[c.end:]
    if prefix.count("(") != prefix.count(")") or prefix.count("[") != prefix.count("]"):
        return None  # the answer sits inside an aside
    if prefix:
        prefix = _standalone(prefix, clean_title(title))
        if prefix is None:
            return None
        wh = c.wh
    else:
        wh = c.wh[:1].upper() + c.wh[1:]
    q = prefix + wh + suffix
    # "The largest order of marsupials ..., it comprises": a pronoun after a comma, when the title is absent
    m = re.search(r", (it|he|she|they|its|his|her|their) ", q)
    if m and title and clean_title(title).lower() not in q.lower():
        q = q[: m.start(1)] + clean_title(title) + _PRONOUNS[m.group(1).capitalize()] + q[m.end(1):]
    q = _drop_parentheticals(q)
    q = re.sub(r"\s+([,;:])", r"\1", " ".join(q.split()))
    q = re.sub(r"[\s,;:]*[.]$", "", q).strip() + "?"
    return q[:1].upper() + q[1:]


# --- sampling ----------------------------------------------------------------------------------
def _passage_items(p: Passage, rng: random.Random, names: frozenset[str]) -> list[tuple[str, Candidate, str]]:
    """Every (sentence, candidate, question) of a passage that passes the filters."""
    items = []
    title = clean_title(p.title)
    seen: set[str] = set()
    for sentence in split_sentences(p.text):
        if not _usable(sentence):
            continue
        has_wh = {w.lower() for w in re.findall(r"\b(?:what|when|where)\b", sentence, flags=re.IGNORECASE)}
        for c in candidates(sentence, p.text, title, names):
            if has_wh & set(c.wh.lower().split()):
                continue  # "including what is now what, ...": a second "what"/"when"/"where" reads as garbage
            key = c.answer.lower()
            if key in seen or len(c.answer.split()) > 6 or not has_answer(p.text, [c.answer]):
                continue
            if title and c.kind == "ENTITY" and (c.answer.lower() in title.lower() or title.lower() in key):
                if rng.random() >= TITLE_ANSWER_KEEP:
                    continue
            q = make_question(sentence, c, title)
            if q is None or has_answer(q, [c.answer]) or not 5 <= len(q.split()) <= 40:
                continue
            seen.add(key)
            items.append((sentence, c, q))
    return items


def make_cloze(passages: list[Passage], n: int, seed: int = 0, per_passage: int = 2,
               corpus_name: str = "corpus") -> list[TrainExample]:
    """Up to ``n`` synthetic cloze examples, at most ``per_passage`` from any one passage.

    Passages are visited in a seeded random order; from each, the candidates of the answer
    type seen least so far are taken first (answers and sentences distinct), and no type may
    pass ``MAX_TYPE_SHARE`` of ``n``, so DATE / NUMBER / ENTITY stay roughly balanced.

    :param passages: The corpus (e.g. ``read_corpus("wiki-vital")``).
    :param n: How many examples to make at most.
    :param seed: Fixes the passage order and every random choice: the same seed gives the same examples.
    :param per_passage: The most examples taken from one passage.
    :param corpus_name: Written into each example's ``source``, ``cloze:<corpus_name>:<passage id>``.
    """
    rng = random.Random(seed)
    order = list(range(len(passages)))
    rng.shuffle(order)
    cap = max(1, math.ceil(MAX_TYPE_SHARE * n))
    counts = dict.fromkeys(KINDS, 0)
    names = given_names(passages)
    out: list[TrainExample] = []
    for idx in order:
        if len(out) >= n:
            break
        p = passages[idx]
        items = _passage_items(p, rng, names)
        rng.shuffle(items)
        used_sentences: set[str] = set()
        k = 0
        while items and k < per_passage and len(out) < n:
            items = [it for it in items if it[0] not in used_sentences and counts[it[1].kind] < cap]
            if not items:
                break
            sentence, c, q = min(items, key=lambda it: counts[it[1].kind])  # stable: ties keep the shuffle
            items.remove((sentence, c, q))
            used_sentences.add(sentence)
            counts[c.kind] += 1
            out.append(TrainExample(
                id=f"cloze-{p.id}-{k}", question=q, answers=[c.answer],
                positives=[Ctx(id=p.id, title=p.title, text=p.text)], synthetic=True,
                source=f"cloze:{corpus_name}:{p.id}", kind=c.kind,
            ))
            k += 1
    return out


_WH = {"what", "who", "whom", "whose", "when", "where", "which", "how", "why"}
_FUNCTION_WORDS = {"the", "a", "an", "of", "in", "on", "at", "by", "for", "to", "and", "or", "as", "with", "from",
                   "is", "was", "were", "are", "be", "been", "being", "has", "had", "have", "his", "her", "its",
                   "their", "that", "this", "these", "those", "it", "also", "about", "roughly", "then", "while"}


def noisy_question(question: str, title: str, rng: random.Random, keep: float = 0.5,
                   max_words: int = 10) -> str:
    """A shorter, less literal form of a cloze question: Lewis et al.'s (2019) "noisy cloze".

    A cloze question repeats its source sentence word for word, so a re-ranker trained on it
    learns to find copied sentences, which real questions never are ("What is the Gini index
    of China?"). Here the wh-word with the word after it and the article title's words are kept,
    function words are dropped, each other word is kept with probability ``keep``, and at most
    ``max_words`` words remain.
    """
    words = [w.strip(",;:?\"'()") for w in question.split()]
    words = [w for w in words if w]
    title_words = {w.lower() for w in re.findall(r"\w+", clean_title(title))}
    protected = set()
    for i, w in enumerate(words):
        if w.lower() in _WH:
            protected.update({i, i + 1})
        elif re.sub(r"\W", "", w.lower()) in title_words:
            protected.add(i)
    kept = [i for i in range(len(words))
            if i in protected or (words[i].lower() not in _FUNCTION_WORDS and rng.random() < keep)]
    optional = [i for i in kept if i not in protected]
    while len(kept) > max_words and optional:
        drop = optional.pop(rng.randrange(len(optional)))
        kept.remove(drop)
    q = " ".join(words[i] for i in kept if i < len(words))
    return q[:1].upper() + q[1:] + "?"


def add_noise(examples: list[TrainExample], keep: float, seed: int = 0, max_words: int = 10) -> list[TrainExample]:
    """:func:`noisy_question` on every example's question; ids get a ``-noisy`` suffix (sources, and so
    the train/dev split by passage, are unchanged)."""
    rng = random.Random(seed)
    return [replace(e, question=noisy_question(e.question, e.positives[0].title if e.positives else "", rng,
                                               keep=keep, max_words=max_words), id=f"{e.id}-noisy")
            for e in examples]


def passage_split(passage_id: str) -> str:
    """"train" or "dev" for a passage, by a stable hash of its id (one passage in ``DEV_SHARE`` is dev)."""
    h = int.from_bytes(hashlib.sha1(passage_id.encode("utf-8")).digest()[:8], "big")
    return "dev" if h % DEV_SHARE == 0 else "train"


def cloze_split(example: TrainExample) -> str:
    """"train" or "dev" by the example's passage, so no passage gives questions to both splits."""
    if example.source.startswith("cloze:"):
        passage_id = example.source.split(":", 2)[2]
    elif example.positives:
        passage_id = example.positives[0].id
    else:
        passage_id = example.id
    return passage_split(passage_id)
