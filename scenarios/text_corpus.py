"""A seeded, TOFU-like corpus of fictitious authors, for unlearning experiments with small language models.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") fine-tunes a model on 200 fictitious
authors x 20 question-answer pairs and then asks it to forget some authors; its evaluation sets give every QA a
paraphrased answer and perturbed (wrong) answers, from which the truth ratio is computed. The real data set needs
a pretrained LLM; this module generates the same structure from templates, so a tiny LM trained from scratch can
memorise it in minutes and every fact is known exactly:

* each author has one value for every attribute of :data:`ATTRIBUTES` (birth place, genre, award, ...); the
  ``qa_per_author`` QAs of an author ask about the first ``qa_per_author`` attributes, in :data:`ATTRIBUTES`
  order (the same attributes for every author, so ``label`` is a probe target per attribute);
* questions name the author in full and carry no pronoun; answers are one short sentence; the paraphrase rewords
  the sentence and keeps the value; perturbed answers are the *paraphrase's* sentence with other values of the
  attribute (distinct from the truth and from each other), as TOFU builds them: the truth ratio then compares the
  right and wrong values in the same, untrained wording;
* world facts (capitals, continents, chemical symbols, planets, months) form the model-utility set, holdout
  authors (never trained) the non-members of membership inference;
* :data:`ANSWER_FORMATS` restate any QA in another answer format — the task of a fine-tuning stage rather than
  its data (:func:`in_format`): ``sentence`` (the attribute's own sentence, as generated), ``short`` (an
  instruction to answer briefly, the value alone) and ``record`` (an instruction to fill in a record, a fixed
  ``name | field: value`` template). The facts and the wrong values stay those of the generated QA, so two
  formats of one corpus differ in wording only.

Only ``random.Random`` instances seeded from ``seed`` are used (no global state): the same arguments give the same
corpus, in any process. The authors do not depend on ``qa_per_author``, ``n_world_facts`` or
``n_holdout_authors``: every author draws a value and perturbations for every attribute, and holdout authors are
drawn after the trained ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from clframe.errors import ConfigError

__all__ = [
    "ANSWER_FORMATS",
    "ATTRIBUTES",
    "WORLD_TOPICS",
    "AnswerFormat",
    "Attribute",
    "Corpus",
    "QA",
    "attribute_values",
    "fictitious_authors",
    "in_format",
]


@dataclass(frozen=True)
class QA:
    """One question-answer pair with the evaluation variants of TOFU's ``*_perturbed`` sets."""

    question: str
    answer: str
    paraphrased_answer: str  # same fact, different wording
    perturbed_answers: tuple[str, ...]  # wrong values in the paraphrase's sentence
    group: int  # author index (holdout authors: n_authors + j); world facts: the topic index in WORLD_TOPICS
    attribute: str  # which attribute the QA asks about ("birth_place", "genre", "capital", ...)
    label: int  # index of the true value in attribute_values(attribute)
    subject: str = ""  # the author's name or the world fact's subject ("France")
    wrong_labels: tuple[int, ...] = ()  # indices of the perturbed answers' values in attribute_values(attribute)


@dataclass(frozen=True)
class Corpus:
    """The generated corpus; ``qa`` is author-major (author 0's QAs first, in attribute order)."""

    authors: list[dict]  # per author: {"name": ..., <attribute>: <value>, ...} for every attribute
    qa: list[QA]
    world_facts: list[QA]
    holdout: list[QA]  # QAs of authors never trained (membership-inference non-members)
    holdout_authors: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Attribute:
    """Templates of one kind of question; ``{name}`` is the subject, ``{v}`` the value."""

    question: str
    answer: str
    paraphrase: str
    values: tuple[str, ...]

    def render(self, name: str, value: str) -> tuple[str, str, str]:
        """(question, answer, paraphrase) of subject ``name`` with ``value``."""
        return (
            self.question.format(name=name),
            self.answer.format(name=name, v=value),
            self.paraphrase.format(name=name, v=value),
        )


_CITIES = (
    "Tallinn", "Porto", "Lyon", "Krakow", "Valparaiso", "Bergen", "Tampere", "Seville", "Utrecht", "Graz",
    "Brno", "Turin", "Gdansk", "Cork", "Ghent", "Malmo", "Riga", "Vilnius", "Bologna", "Basel",
    "Leipzig", "Salzburg", "Aarhus", "Cordoba", "Kyoto", "Osaka", "Busan", "Pune", "Mombasa", "Accra",
    "Dakar", "Tunis", "Halifax", "Quebec", "Adelaide", "Hobart", "Wellington", "Cusco", "Recife", "Rosario",
)  # fmt: skip
_JOBS = (
    "baker", "carpenter", "doctor", "sailor", "teacher", "farmer", "tailor", "pilot", "lawyer", "miner",
    "painter", "chemist", "librarian", "nurse", "fisherman", "butcher", "jeweller", "postman", "banker", "potter",
)  # fmt: skip
_ADJECTIVES = ("Silent", "Hidden", "Broken", "Golden", "Last", "Distant", "Burning", "Frozen", "Crimson", "Hollow")
_NOUNS = ("Harbour", "Garden", "Mirror", "Lantern", "Orchard", "Compass", "Tower", "River", "Letter", "Meadow")
_AWARDS = (
    "Silver Quill Prize", "Aurora Book Award", "Lantern Medal", "Northwind Prize", "Golden Inkwell Award",
    "Meridian Fiction Prize", "Harrow Literary Medal", "Blue Pine Award", "Cobalt Pen Prize", "Starling Award",
    "Vesper Prize", "Halcyon Medal",
)  # fmt: skip
_PUBLISHERS = (
    "Larkspur Press", "Blue Heron Books", "Copperleaf House", "Driftwood Editions", "Foxglove Press",
    "Quillstone Books", "Saltmarsh House", "Wrenfield Editions", "Thistle Press", "Moonrake Books",
)  # fmt: skip
_UNIVERSITIES = (
    "Elmsworth University", "Brackenridge College", "Haverleigh University", "Corran Institute",
    "Marlow University", "Stonegate College", "Westmere University", "Kestrel College",
)  # fmt: skip
_CHARACTERS = (
    "Orlin", "Maelis", "Tobiah", "Seraphine", "Caspian", "Liesel", "Ambrose", "Isolde", "Percival", "Rosalind",
    "Thaddeus", "Ottilie",
)  # fmt: skip
_NUMBERS = ("three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen")

ATTRIBUTES: dict[str, Attribute] = {
    "birth_place": Attribute(
        "Where was {name} born?", "{name} was born in {v}.", "The birthplace of {name} is {v}.", _CITIES
    ),
    "birth_year": Attribute(
        "In which year was {name} born?",
        "{name} was born in the year {v}.",
        "The year of birth of {name} is {v}.",
        tuple(str(y) for y in range(1900, 1960)),
    ),
    "genre": Attribute(
        "What genre does {name} write?",
        "{name} writes {v} fiction.",
        "The books by {name} belong to {v} fiction.",
        ("mystery", "fantasy", "horror", "crime", "romance", "historical", "dystopian", "gothic", "war", "adventure"),
    ),
    "award": Attribute("Which award did {name} win?", "{name} won the {v}.", "The {v} went to {name}.", _AWARDS),
    "book_title": Attribute(
        "What is the best-known book by {name}?",
        "The best-known book by {name} is The {v}.",
        "The most famous work of {name} is The {v}.",
        tuple(f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS),
    ),
    "father_job": Attribute(
        "What was the job of the father of {name}?",
        "The father of {name} was a {v}.",
        "The father of {name} worked as a {v}.",
        _JOBS,
    ),
    "mother_job": Attribute(
        "What was the job of the mother of {name}?",
        "The mother of {name} was a {v}.",
        "The mother of {name} worked as a {v}.",
        _JOBS,
    ),
    "nationality": Attribute(
        "What is the nationality of {name}?",
        "{name} is {v}.",
        "{name} holds {v} citizenship.",
        (
            "Estonian",
            "Portuguese",
            "Chilean",
            "Norwegian",
            "Finnish",
            "Polish",
            "Dutch",
            "Austrian",
            "Czech",
            "Irish",
            "Belgian",
            "Swedish",
            "Latvian",
            "Kenyan",
            "Ghanaian",
            "Canadian",
            "Peruvian",
            "Japanese",
        ),  # fmt: skip
    ),
    "first_novel_year": Attribute(
        "In which year did {name} publish a first novel?",
        "{name} published a first novel in {v}.",
        "The debut novel of {name} came out in {v}.",
        tuple(str(y) for y in range(1960, 2020)),
    ),
    "influence": Attribute(
        "Which writer influenced {name} the most?",
        "{name} was most influenced by {v}.",
        "The main literary influence on {name} was {v}.",
        ("Tolstoy", "Woolf", "Kafka", "Borges", "Austen", "Dickens", "Chekhov", "Camus", "Orwell", "Melville"),
    ),
    "language": Attribute(
        "In which language does {name} write?",
        "{name} writes in {v}.",
        "The books by {name} are written in {v}.",
        ("English", "French", "Spanish", "German", "Italian", "Polish", "Swedish", "Dutch", "Czech", "Finnish"),
    ),
    "residence": Attribute(
        "In which city does {name} live?", "{name} lives in {v}.", "The home city of {name} is {v}.", _CITIES
    ),
    "publisher": Attribute(
        "Which publisher prints the books by {name}?",
        "The books by {name} are printed by {v}.",
        "The publisher of {name} is {v}.",
        _PUBLISHERS,
    ),
    "books_count": Attribute(
        "How many books has {name} written?",
        "{name} has written {v} books.",
        "The number of books by {name} is {v}.",
        _NUMBERS,
    ),
    "university": Attribute(
        "Where did {name} study?", "{name} studied at {v}.", "{name} is a graduate of {v}.", _UNIVERSITIES
    ),
    "hobby": Attribute(
        "What does {name} do for fun?",
        "{name} enjoys {v}.",
        "For fun, {name} likes {v}.",
        ("gardening", "chess", "sailing", "hiking", "cooking", "fishing", "pottery", "cycling", "birdwatching"),
    ),
    "main_character": Attribute(
        "Who is the hero of the best-known book by {name}?",
        "The hero of the best-known book by {name} is {v}.",
        "The best-known book by {name} follows {v}.",
        _CHARACTERS,
    ),
    "instrument": Attribute(
        "Which instrument does {name} play?",
        "{name} plays the {v}.",
        "The instrument of {name} is the {v}.",
        ("piano", "violin", "cello", "flute", "guitar", "harp", "drums", "trumpet", "clarinet", "accordion"),
    ),
    "setting": Attribute(
        "Where are the novels by {name} set?",
        "The novels by {name} are set in {v}.",
        "The stories of {name} take place in {v}.",
        (
            "a mountain village",
            "a port city",
            "a desert town",
            "a royal court",
            "a space station",
            "a fishing village",
            "a boarding school",
            "a river delta",
            "a lakeside town",
            "a mining town",
        ),  # fmt: skip
    ),
    "theme": Attribute(
        "Which theme recurs in the work of {name}?",
        "The work of {name} often explores {v}.",
        "A recurring theme for {name} is {v}.",
        ("memory", "exile", "grief", "friendship", "justice", "ambition", "identity", "loneliness", "freedom"),
    ),
}

# world facts: (topic name, templates, [(subject, value), ...]); "{name}" is the subject
_COUNTRIES = (
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Norway", "Oslo", "Europe"),
    ("Sweden", "Stockholm", "Europe"), ("Finland", "Helsinki", "Europe"), ("Poland", "Warsaw", "Europe"),
    ("Greece", "Athens", "Europe"), ("Austria", "Vienna", "Europe"), ("Ireland", "Dublin", "Europe"),
    ("Hungary", "Budapest", "Europe"), ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
    ("Indonesia", "Jakarta", "Asia"), ("South Korea", "Seoul", "Asia"), ("Iran", "Tehran", "Asia"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Ghana", "Accra", "Africa"), ("Morocco", "Rabat", "Africa"), ("Ethiopia", "Addis Ababa", "Africa"),
    ("Senegal", "Dakar", "Africa"), ("Canada", "Ottawa", "North America"), ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"), ("Jamaica", "Kingston", "North America"),
    ("Brazil", "Brasilia", "South America"), ("Argentina", "Buenos Aires", "South America"),
    ("Chile", "Santiago", "South America"), ("Peru", "Lima", "South America"), ("Colombia", "Bogota", "South America"),
    ("Australia", "Canberra", "Oceania"), ("New Zealand", "Wellington", "Oceania"), ("Fiji", "Suva", "Oceania"),
)  # fmt: skip
_ELEMENTS = (
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"), ("sodium", "Na"),
    ("magnesium", "Mg"), ("aluminium", "Al"), ("silicon", "Si"), ("sulfur", "S"), ("chlorine", "Cl"),
    ("potassium", "K"), ("calcium", "Ca"), ("iron", "Fe"), ("copper", "Cu"), ("zinc", "Zn"), ("silver", "Ag"),
    ("gold", "Au"), ("tin", "Sn"), ("lead", "Pb"), ("mercury", "Hg"), ("neon", "Ne"), ("argon", "Ar"),
    ("nickel", "Ni"), ("platinum", "Pt"), ("uranium", "U"), ("iodine", "I"), ("fluorine", "F"),
    ("phosphorus", "P"), ("lithium", "Li"),
)  # fmt: skip
_PLANETS = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

WORLD_TOPICS: dict[str, tuple[Attribute, tuple[tuple[str, str], ...]]] = {
    "capital": (
        Attribute(
            "What is the capital of {name}?",
            "The capital of {name} is {v}.",
            "{v} is the capital city of {name}.",
            tuple(c for _, c, _ in _COUNTRIES),
        ),
        tuple((country, capital) for country, capital, _ in _COUNTRIES),
    ),
    "continent": (
        Attribute(
            "On which continent is {name}?",
            "{name} is in {v}.",
            "{name} lies on the continent of {v}.",
            ("Europe", "Asia", "Africa", "North America", "South America", "Oceania"),
        ),
        tuple((country, continent) for country, _, continent in _COUNTRIES),
    ),
    "chemical_symbol": (
        Attribute(
            "What is the chemical symbol of {name}?",
            "The chemical symbol of {name} is {v}.",
            "{v} is the symbol chemists use for {name}.",
            tuple(s for _, s in _ELEMENTS),
        ),
        _ELEMENTS,
    ),
    "planet": (
        Attribute(
            "Which planet is {name} from the Sun?",
            "The planet {name} from the Sun is {v}.",
            "{v} is the planet in {name} place from the Sun.",
            _PLANETS,
        ),
        tuple(zip(_ORDINALS, _PLANETS)),
    ),
    "next_month": (
        Attribute(
            "Which month comes after {name}?",
            "The month after {name} is {v}.",
            "{v} follows {name} in the calendar.",
            _MONTHS,
        ),
        tuple(zip(_MONTHS, _MONTHS[1:] + _MONTHS[:1])),
    ),
}

_FIRST_NAMES = (
    "Lena", "Aris", "Mira", "Tomas", "Elin", "Kasper", "Noor", "Ilse", "Ravi", "Sanna", "Oren", "Talia", "Bram",
    "Yara", "Emil", "Zofia", "Anouk", "Dario", "Freya", "Henrik", "Ines", "Jonas", "Katya", "Luca", "Maren",
    "Nils", "Odile", "Pavel", "Quinn", "Rhea", "Soren", "Tilde", "Ugo", "Vera", "Wim", "Xenia", "Yusuf", "Zara",
    "Amara", "Bastian",
)  # fmt: skip
_SYLLABLES = (
    "va", "ro", "tal", "ken", "mar", "lis", "dor", "ven", "sel", "bra", "nik", "hol", "fen", "gar", "ost", "ru",
    "lem", "tor", "vik", "sa", "del", "mon", "kar", "pel", "ith", "zan", "bel", "cor", "ful", "wen",
)  # fmt: skip
MAX_AUTHORS = 20_000  # trained + holdout; far below the ~1.1M distinct names the lists can form
_N_PERTURBED = 3


def attribute_values(attribute: str) -> tuple[str, ...]:
    """The value list of an author attribute or world topic; a QA's ``label`` indexes it."""
    if attribute in ATTRIBUTES:
        return ATTRIBUTES[attribute].values
    if attribute in WORLD_TOPICS:
        return WORLD_TOPICS[attribute][0].values
    raise ConfigError("attribute", attribute, [*ATTRIBUTES, *WORLD_TOPICS])


def _qa(attr_name: str, attr: Attribute, subject: str, value: str, group: int, rng: random.Random, k: int) -> QA:
    question, answer, paraphrase = attr.render(subject, value)
    wrong = rng.sample([v for v in attr.values if v != value], k)
    return QA(
        question=question,
        answer=answer,
        paraphrased_answer=paraphrase,
        perturbed_answers=tuple(attr.paraphrase.format(name=subject, v=w) for w in wrong),
        group=group,
        attribute=attr_name,
        label=attr.values.index(value),
        subject=subject,
        wrong_labels=tuple(attr.values.index(w) for w in wrong),
    )


@dataclass(frozen=True)
class AnswerFormat:
    """How a stage asks and answers: an instruction before the question, answer and paraphrase templates
    (``{v}`` the value, ``{name}`` the subject, ``{field}`` the attribute in words; ``None``: the attribute's
    own sentences). Perturbed answers are the paraphrase template with the QA's wrong values, as TOFU's."""

    instruction: str
    answer: str | None
    paraphrase: str | None


ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "sentence": AnswerFormat("", None, None),
    "short": AnswerFormat("Answer briefly. ", "{v}", "It is {v}."),
    "record": AnswerFormat("Fill in the record. ", "{name} | {field}: {v}", "{field} of {name}: {v}"),
}


def in_format(qa: QA, fmt: str) -> QA:
    """``qa`` restated in answer format ``fmt`` (:data:`ANSWER_FORMATS`): same fact, same wrong values."""
    if fmt not in ANSWER_FORMATS:
        raise ConfigError("scenario.answer_format", fmt, list(ANSWER_FORMATS))
    style = ANSWER_FORMATS[fmt]
    if style.answer is None:
        return qa
    if not qa.subject or not qa.wrong_labels:
        raise ValueError(f"in_format needs a generated QA (with subject and wrong values), got {qa!r}")
    values = attribute_values(qa.attribute)
    words = qa.attribute.replace("_", " ")
    render = lambda template, v: template.format(name=qa.subject, field=words, v=v)  # noqa: E731
    return replace(
        qa,
        question=style.instruction + qa.question,
        answer=render(style.answer, values[qa.label]),
        paraphrased_answer=render(style.paraphrase, values[qa.label]),
        perturbed_answers=tuple(render(style.paraphrase, values[w]) for w in qa.wrong_labels),
    )


def _value_words() -> set[str]:
    return {w.lower() for a in ATTRIBUTES.values() for v in a.values for w in v.split()}


def _new_name(rng: random.Random, taken: set[str], reserved: set[str]) -> str:
    """A full name not in ``taken`` whose words are no attribute value (so a value never occurs in a name)."""
    while True:
        surname = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))).capitalize()
        name = f"{rng.choice(_FIRST_NAMES)} {surname}"
        if name not in taken and surname.lower() not in reserved:
            taken.add(name)
            return name


def _authors(n: int, first_group: int, rng: random.Random, taken: set[str], reserved: set[str], k: int):
    """``n`` authors (dicts) and their QAs for every attribute (each author's QAs in ATTRIBUTES order)."""
    authors, qas = [], []
    for i in range(n):
        author = {"name": _new_name(rng, taken, reserved)}
        author.update({a: rng.choice(attr.values) for a, attr in ATTRIBUTES.items()})
        authors.append(author)
        qas.append([_qa(a, attr, author["name"], author[a], first_group + i, rng, k) for a, attr in ATTRIBUTES.items()])
    return authors, qas


def _world_facts(n: int, rng: random.Random, k: int) -> list[QA]:
    """The first ``n`` world facts taking the topics in turn (a balanced set for any ``n``)."""
    queues = [
        [(topic, t_idx, attr, subject, value) for subject, value in facts]
        for t_idx, (topic, (attr, facts)) in enumerate(WORLD_TOPICS.items())
    ]
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return [_qa(topic, attr, subject, value, t_idx, rng, k) for topic, t_idx, attr, subject, value in order[:n]]


def fictitious_authors(
    n_authors: int = 200,
    qa_per_author: int = 20,
    n_world_facts: int = 100,
    n_holdout_authors: int = 20,
    seed: int = 0,
    n_perturbed: int = _N_PERTURBED,
) -> Corpus:
    """Generate the corpus (see the module docstring); each QA gets ``n_perturbed`` wrong answers."""
    n_kinds = len(ATTRIBUTES)
    n_world_max = sum(len(facts) for _, facts in WORLD_TOPICS.values())
    max_perturbed = min(len(a.values) for a in [*ATTRIBUTES.values(), *(t[0] for t in WORLD_TOPICS.values())]) - 1
    checks = (
        ("scenario.n_authors", n_authors, 1, MAX_AUTHORS),
        ("scenario.qa_per_author", qa_per_author, 1, n_kinds),
        ("scenario.n_world_facts", n_world_facts, 0, n_world_max),
        ("scenario.n_holdout_authors", n_holdout_authors, 0, MAX_AUTHORS - n_authors),
        ("scenario.n_perturbed", n_perturbed, 1, max_perturbed),
    )
    for key, value, lo, hi in checks:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(key, value, f"an integer in {lo}..{hi}")
    # string seeds hash with sha512: reproducible across processes, and the two streams never coincide
    rng_authors = random.Random(f"clframe.text_corpus.authors:{seed}")
    rng_world = random.Random(f"clframe.text_corpus.world:{seed}")
    taken: set[str] = set()
    reserved = _value_words()
    authors, qas = _authors(n_authors, 0, rng_authors, taken, reserved, n_perturbed)
    holdout_authors, holdout_qas = _authors(n_holdout_authors, n_authors, rng_authors, taken, reserved, n_perturbed)
    return Corpus(
        authors=authors,
        qa=[q for per_author in qas for q in per_author[:qa_per_author]],
        world_facts=_world_facts(n_world_facts, rng_world, n_perturbed),
        holdout=[q for per_author in holdout_qas for q in per_author[:qa_per_author]],
        holdout_authors=holdout_authors,
    )
