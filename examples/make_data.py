"""Build the small example datasets the quickstart jobs train on (deterministic; rerun to refresh).

The SFT records are templated tasks with a learnable structure (arithmetic, capitals, word edits), so a
135M model shows a clear drop in held-out loss within a few minutes on a CPU. The preference records
ask the same kinds of questions; the chosen reply always answers plainly and correctly, the rejected
one hedges, pads and often gets the answer wrong, or refuses: a consistent property a 135M model can
learn to prefer, checked on held-out questions with hedges and refusals worded differently. The embedding records are
facts about countries (query -> document), with the eval files on countries that no training record
mentions, and coloured-shape images (64 x 64 PNG) with captions, evaluated on unseen colour/shape pairs.
Run:
    python examples/make_data.py
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Argentina": "Buenos Aires",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Turkey": "Ankara",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Australia": "Canberra",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Hungary": "Budapest",
    "Denmark": "Copenhagen",
    "Belgium": "Brussels",
    "Netherlands": "Amsterdam",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Nigeria": "Abuja",
    "Morocco": "Rabat",
    "Cuba": "Havana",
    "Iceland": "Reykjavik",
    "Czechia": "Prague",
    "Romania": "Bucharest",
    "Colombia": "Bogota",
}
WORDS = [
    "red",
    "green",
    "blue",
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "paper",
    "light",
    "music",
    "garden",
    "window",
    "silver",
    "forest",
    "ocean",
    "candle",
    "rocket",
    "bridge",
    "pencil",
]
ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "old": "new",
    "rich": "poor",
    "strong": "weak",
    "full": "empty",
    "high": "low",
}


def _alpaca(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return {"instruction": f"What is {a} + {b}?", "input": "", "output": f"{a} + {b} = {a + b}."}
    if kind == 1:
        country = rng.choice(sorted(CAPITALS))
        return {
            "instruction": f"What is the capital of {country}?",
            "input": "",
            "output": f"The capital of {country} is {CAPITALS[country]}.",
        }
    if kind == 2:
        words = rng.sample(WORDS, rng.randint(3, 5))
        return {
            "instruction": "Reverse the order of the words.",
            "input": " ".join(words),
            "output": " ".join(reversed(words)),
        }
    if kind == 3:
        words = rng.sample(WORDS, rng.randint(2, 4))
        return {
            "instruction": "Write the text in uppercase.",
            "input": " ".join(words),
            "output": " ".join(words).upper(),
        }
    if kind == 4:
        numbers = rng.sample(range(1, 100), rng.randint(3, 6))
        return {
            "instruction": "Sort the numbers in ascending order.",
            "input": ", ".join(map(str, numbers)),
            "output": ", ".join(map(str, sorted(numbers))),
        }
    word = rng.choice(sorted(ANTONYMS))
    return {
        "instruction": f"Give the opposite of the word '{word}'.",
        "input": "",
        "output": f"The opposite of '{word}' is '{ANTONYMS[word]}'.",
    }


HEDGES = [
    "I'm not entirely sure, but I think",
    "Hmm, this is a tricky one. Maybe",
    "If I remember correctly,",
    "I could be wrong here, but",
    "Honestly, I'm not certain, though I believe",
    "As far as I can tell,",
]
FILLERS = [
    "Please double-check this somewhere else.",
    "But don't quote me on that.",
    "I hope that helps, maybe.",
    "There might be other opinions on this.",
    "It's hard to say for sure.",
    "Let me know if that seems off.",
]
REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I would rather not answer that question.",
    "That's not something I can do right now.",
    "Unfortunately, I am unable to assist with this.",
]
# held-out wordings: the eval pairs hedge and refuse in words the training pairs never use
EVAL_HEDGES = ["Perhaps, although I'm really not sure,", "My best guess would be that", "I might be mistaken, but"]
EVAL_FILLERS = ["You may want to verify it.", "Take that with a grain of salt.", "I can't promise it's right."]
EVAL_REFUSALS = ["Sorry, I cannot answer this one.", "I'm afraid I can't provide that information."]


def _task(rng: random.Random) -> tuple[str, str, str, str]:
    """(instruction, input, correct answer, a wrong answer in the same style)."""
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        wrong = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
        return f"What is {a} + {b}?", "", f"{a} + {b} = {a + b}.", f"{a} + {b} = {wrong}."
    if kind == 1:
        country = rng.choice(sorted(CAPITALS))
        other = CAPITALS[rng.choice([c for c in sorted(CAPITALS) if c != country])]
        return (
            f"What is the capital of {country}?",
            "",
            f"The capital of {country} is {CAPITALS[country]}.",
            f"The capital of {country} is {other}.",
        )
    if kind == 2:
        words = rng.sample(WORDS, rng.randint(3, 5))
        shuffled = words[1:] + words[:1]
        return "Reverse the order of the words.", " ".join(words), " ".join(reversed(words)), " ".join(shuffled)
    if kind == 3:
        numbers = rng.sample(range(1, 100), rng.randint(3, 6))
        return (
            "Sort the numbers in ascending order.",
            ", ".join(map(str, numbers)),
            ", ".join(map(str, sorted(numbers))),
            ", ".join(map(str, sorted(numbers, reverse=True))),
        )
    word = rng.choice(sorted(ANTONYMS))
    other = rng.choice([w for w in sorted(ANTONYMS.values()) if w != ANTONYMS[word]])
    return (
        f"Give the opposite of the word '{word}'.",
        "",
        f"The opposite of '{word}' is '{ANTONYMS[word]}'.",
        f"The opposite of '{word}' is '{other}'.",
    )


def _preference(rng: random.Random, held_out: bool) -> dict[str, str]:
    """A pair in LLaMA-Factory's alpaca pairwise layout: the chosen reply answers plainly and
    correctly; the rejected one refuses, or hedges and pads an answer that is often wrong."""
    instruction, extra, right, wrong = _task(rng)
    hedges, fillers, refusals = (EVAL_HEDGES, EVAL_FILLERS, EVAL_REFUSALS) if held_out else (HEDGES, FILLERS, REFUSALS)
    if rng.random() < 0.25:
        rejected = rng.choice(refusals)
    else:
        answer = wrong if rng.random() < 0.6 else right
        rejected = f"{rng.choice(hedges)} {answer[0].lower() + answer[1:]} {rng.choice(fillers)}"
    return {"instruction": instruction, "input": extra, "chosen": right, "rejected": rejected}


def _preference_layouts(pairs: list[dict[str, str]]) -> dict[str, list[dict[str, object]]]:
    """The same pairs in the other layouts the runner reads: sharegpt pairwise (LLaMA-Factory), TRL's
    prompt / chosen / rejected messages, and TRL's unpaired completions with a label (KTO)."""

    def prompt(pair: dict[str, str]) -> str:
        return pair["instruction"] + (f"\n\n{pair['input']}" if pair["input"] else "")

    sharegpt = [
        {
            "conversations": [{"from": "human", "value": prompt(p)}],
            "chosen": {"from": "gpt", "value": p["chosen"]},
            "rejected": {"from": "gpt", "value": p["rejected"]},
        }
        for p in pairs
    ]
    messages = [
        {
            "prompt": [{"role": "user", "content": prompt(p)}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]
    unpaired = [
        {
            "prompt": [{"role": "user", "content": prompt(p)}],
            "completion": [{"role": "assistant", "content": p[side]}],
            "label": side == "chosen",
        }
        for i, p in enumerate(pairs)
        for side in (("chosen",) if i % 3 == 0 else ("chosen", "rejected"))
    ]
    return {"sharegpt": sharegpt, "messages": messages, "unpaired": unpaired}


def _to_messages(record: dict[str, str]) -> list[dict[str, str]]:
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


# Embedding data: facts about countries. Every country's facts appear either in training or in
# evaluation, never both, so the eval metric measures what carries over to unseen countries (the
# query and document styles), not memorised pairs.
COUNTRY_FACTS = [  # country, capital, currency, main language, continent
    ("France", "Paris", "euro", "French", "Europe"),
    ("Germany", "Berlin", "euro", "German", "Europe"),
    ("Italy", "Rome", "euro", "Italian", "Europe"),
    ("Spain", "Madrid", "euro", "Spanish", "Europe"),
    ("Portugal", "Lisbon", "euro", "Portuguese", "Europe"),
    ("the Netherlands", "Amsterdam", "euro", "Dutch", "Europe"),
    ("Greece", "Athens", "euro", "Greek", "Europe"),
    ("Ireland", "Dublin", "euro", "English", "Europe"),
    ("Austria", "Vienna", "euro", "German", "Europe"),
    ("Finland", "Helsinki", "euro", "Finnish", "Europe"),
    ("Poland", "Warsaw", "zloty", "Polish", "Europe"),
    ("Czechia", "Prague", "koruna", "Czech", "Europe"),
    ("Hungary", "Budapest", "forint", "Hungarian", "Europe"),
    ("Romania", "Bucharest", "leu", "Romanian", "Europe"),
    ("Sweden", "Stockholm", "krona", "Swedish", "Europe"),
    ("Norway", "Oslo", "krone", "Norwegian", "Europe"),
    ("Denmark", "Copenhagen", "krone", "Danish", "Europe"),
    ("Iceland", "Reykjavik", "krona", "Icelandic", "Europe"),
    ("the United Kingdom", "London", "pound", "English", "Europe"),
    ("Switzerland", "Bern", "franc", "German", "Europe"),
    ("Russia", "Moscow", "ruble", "Russian", "Europe"),
    ("Ukraine", "Kyiv", "hryvnia", "Ukrainian", "Europe"),
    ("Turkey", "Ankara", "lira", "Turkish", "Asia"),
    ("Japan", "Tokyo", "yen", "Japanese", "Asia"),
    ("China", "Beijing", "yuan", "Mandarin", "Asia"),
    ("India", "New Delhi", "rupee", "Hindi", "Asia"),
    ("South Korea", "Seoul", "won", "Korean", "Asia"),
    ("Thailand", "Bangkok", "baht", "Thai", "Asia"),
    ("Vietnam", "Hanoi", "dong", "Vietnamese", "Asia"),
    ("Indonesia", "Jakarta", "rupiah", "Indonesian", "Asia"),
    ("the Philippines", "Manila", "peso", "Filipino", "Asia"),
    ("Malaysia", "Kuala Lumpur", "ringgit", "Malay", "Asia"),
    ("Pakistan", "Islamabad", "rupee", "Urdu", "Asia"),
    ("Iran", "Tehran", "rial", "Persian", "Asia"),
    ("Israel", "Jerusalem", "shekel", "Hebrew", "Asia"),
    ("Saudi Arabia", "Riyadh", "riyal", "Arabic", "Asia"),
    ("Egypt", "Cairo", "pound", "Arabic", "Africa"),
    ("Morocco", "Rabat", "dirham", "Arabic", "Africa"),
    ("Nigeria", "Abuja", "naira", "English", "Africa"),
    ("Kenya", "Nairobi", "shilling", "Swahili", "Africa"),
    ("Ethiopia", "Addis Ababa", "birr", "Amharic", "Africa"),
    ("South Africa", "Pretoria", "rand", "Zulu", "Africa"),
    ("Ghana", "Accra", "cedi", "English", "Africa"),
    ("Tanzania", "Dodoma", "shilling", "Swahili", "Africa"),
    ("the United States", "Washington", "dollar", "English", "North America"),
    ("Canada", "Ottawa", "dollar", "English", "North America"),
    ("Mexico", "Mexico City", "peso", "Spanish", "North America"),
    ("Cuba", "Havana", "peso", "Spanish", "North America"),
    ("Brazil", "Brasilia", "real", "Portuguese", "South America"),
    ("Argentina", "Buenos Aires", "peso", "Spanish", "South America"),
    ("Chile", "Santiago", "peso", "Spanish", "South America"),
    ("Peru", "Lima", "sol", "Spanish", "South America"),
    ("Colombia", "Bogota", "peso", "Spanish", "South America"),
    ("Venezuela", "Caracas", "bolivar", "Spanish", "South America"),
    ("Australia", "Canberra", "dollar", "English", "Oceania"),
    ("New Zealand", "Wellington", "dollar", "English", "Oceania"),
]
FACT_QUERIES = {
    "capital": ["capital city of {c}", "which city is the seat of government of {c}", "where is the parliament of {c}"],
    "currency": ["money used in {c}", "what would I pay with in {c}", "what do shops in {c} take"],
    "language": ["language spoken in {c}", "what do people speak in {c}", "what would I hear on the streets of {c}"],
    "continent": ["which continent is {c} on", "where in the world is {c}", "what part of the world is {c} in"],
}
FACT_DOCUMENTS = {
    "capital": [
        "{cap} is the capital of {c}.",
        "The government of {c} sits in {cap}.",
        "{cap} is home to the parliament of {c}.",
    ],
    "currency": [
        "In {c} people pay with the {cur}.",
        "The {cur} is the legal tender of {c}.",
        "Prices in {c} are marked in {cur}.",
    ],
    "language": [
        "Most people in {c} speak {lang}.",
        "{lang} is the main language of {c}.",
        "Schools in {c} teach in {lang}.",
    ],
    "continent": ["{c} lies in {cont}.", "{c} is a country in {cont}.", "On a map, {c} is found in {cont}."],
}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_CAPTIONS = ["a {colour} {shape}", "a {shape} coloured {colour}", "one {colour} {shape} on a white background"]


def _fill(template: str, row: tuple[str, ...]) -> str:
    c, cap, cur, lang, cont = row
    text = template.format(c=c, cap=cap, cur=cur, lang=lang, cont=cont)
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class Fact:
    """One fact about a country as a query, a document stating it, and a hard negative (another
    fact about the same country)."""

    row: tuple[str, ...]
    attribute: str
    query: str
    positive: str
    negative: str

    def triplet(self) -> dict[str, str]:
        return {"query": self.query, "positive": self.positive, "negative": self.negative}


def _facts(rng: random.Random, rows: list[tuple[str, ...]], per_fact: int) -> list[Fact]:
    out = []
    for row in rows:
        for attribute in FACT_QUERIES:
            for _ in range(per_fact):
                other = rng.choice([a for a in FACT_DOCUMENTS if a != attribute])
                out.append(
                    Fact(
                        row,
                        attribute,
                        _fill(rng.choice(FACT_QUERIES[attribute]), row),
                        _fill(rng.choice(FACT_DOCUMENTS[attribute]), row),
                        _fill(rng.choice(FACT_DOCUMENTS[other]), row),
                    )
                )
    rng.shuffle(out)
    return out


def _scored(rng: random.Random, facts: list[Fact], rows: list[tuple[str, ...]]) -> list[dict[str, object]]:
    """score 1.0: the document answers the query; 0.4: another fact about the same country;
    0.0: a fact about another country."""
    out: list[dict[str, object]] = []
    for fact in facts:
        stranger = rng.choice([r for r in rows if r != fact.row])
        unrelated = _fill(rng.choice(FACT_DOCUMENTS[rng.choice(sorted(FACT_DOCUMENTS))]), stranger)
        out += [
            {"sentence1": fact.query, "sentence2": fact.positive, "score": 1.0},
            {"sentence1": fact.query, "sentence2": fact.negative, "score": 0.4},
            {"sentence1": fact.query, "sentence2": unrelated, "score": 0.0},
        ]
    return out


def _multitask(rng: random.Random, facts: list[Fact]) -> list[dict[str, str]]:
    """Task 'retrieval': query -> document; task 'text-matching': two wordings of the same fact."""
    out = []
    for i, fact in enumerate(facts):
        if i % 2:
            out.append({"query": fact.query, "positive": fact.positive, "task": "retrieval"})
        else:
            wordings = [_fill(d, fact.row) for d in FACT_DOCUMENTS[fact.attribute]]
            other = rng.choice([w for w in wordings if w != fact.positive])
            out.append({"query": fact.positive, "positive": other, "task": "text-matching"})
    return out


def _shape_image(path: Path, colour: str, shape: str) -> None:
    """A 64 x 64 palette PNG (a few hundred bytes) of one coloured shape on white."""
    from PIL import Image, ImageDraw

    image = Image.new("P", (64, 64), 0)
    image.putpalette([255, 255, 255, *COLOURS[colour]] + [0] * (256 - 2) * 3)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((12, 12, 52, 52), fill=1)
    elif shape == "square":
        draw.rectangle((14, 14, 50, 50), fill=1)
    elif shape == "triangle":
        draw.polygon([(32, 10), (54, 52), (10, 52)], fill=1)
    else:
        draw.rectangle((27, 10, 37, 54), fill=1)
        draw.rectangle((10, 27, 54, 37), fill=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def _image_text(rng: random.Random, combos: list[tuple[str, str]], repeats: int) -> list[dict[str, str]]:
    """Text -> image records (`image`) and image -> text records (`query_image`)."""
    out = []
    for colour, shape in combos:
        for i in range(repeats):
            caption = rng.choice(SHAPE_CAPTIONS).format(colour=colour, shape=shape)
            key = "image" if i % 2 == 0 else "query_image"
            out.append({key: f"{colour}-{shape}.png", "text": caption})
    rng.shuffle(out)
    return out


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261122)
    alpaca = [_alpaca(rng) for _ in range(460)]
    _write_jsonl(OUT / "sft" / "alpaca-train.jsonl", alpaca[:400])
    _write_jsonl(OUT / "sft" / "alpaca-eval.jsonl", alpaca[400:])
    (OUT / "sft" / "messages.json").write_text(
        json.dumps({"data": [{"messages": _to_messages(r)} for r in alpaca[:120]]}, indent=1), encoding="utf-8"
    )
    sharegpt = [
        {
            "conversations": [{"from": "system", "value": "You are a concise assistant."}]
            + [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in _to_messages(r)]
        }
        for r in alpaca[:120]
    ]
    (OUT / "sft" / "sharegpt.json").write_text(json.dumps(sharegpt, indent=1), encoding="utf-8")
    _write_jsonl(
        OUT / "sft" / "text.jsonl",
        [{"text": f"Q: {r['instruction']} {r['input']}\nA: {r['output']}"} for r in alpaca[:120]],
    )

    embed = OUT / "embed"
    rows = list(COUNTRY_FACTS)
    rng.shuffle(rows)
    held_out, seen = rows[:14], rows[14:]
    train_facts, eval_facts = _facts(rng, seen, per_fact=2), _facts(rng, held_out, per_fact=1)
    _write_jsonl(embed / "pairs-train.jsonl", [{"query": f.query, "positive": f.positive} for f in train_facts])
    _write_jsonl(embed / "pairs-eval.jsonl", [{"query": f.query, "positive": f.positive} for f in eval_facts])
    _write_jsonl(embed / "triplets.jsonl", [f.triplet() for f in train_facts])
    _write_jsonl(embed / "triplets-eval.jsonl", [f.triplet() for f in eval_facts])
    _write_jsonl(embed / "scored-pairs.jsonl", _scored(rng, train_facts[:200], seen))
    _write_jsonl(embed / "scored-pairs-eval.jsonl", _scored(rng, eval_facts, held_out))
    _write_jsonl(embed / "multitask.jsonl", _multitask(rng, train_facts))
    _write_jsonl(embed / "multitask-eval.jsonl", _multitask(rng, eval_facts))
    combos = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    for colour, shape in combos:
        _shape_image(embed / "images" / f"{colour}-{shape}.png", colour, shape)
    rng.shuffle(combos)  # held-out colour/shape combinations: each colour and shape is seen in training
    _write_jsonl(embed / "image-text.jsonl", _image_text(rng, combos[6:], repeats=4))
    _write_jsonl(embed / "image-text-eval.jsonl", _image_text(rng, combos[:6], repeats=2))

    # preference pairs: a generator of their own, so the files above stay as they were
    pref_rng = random.Random(20261203)
    preference = OUT / "preference"
    train_pairs = [_preference(pref_rng, held_out=False) for _ in range(240)]
    eval_pairs = [_preference(pref_rng, held_out=True) for _ in range(48)]
    _write_jsonl(preference / "pairs-train.jsonl", train_pairs)
    _write_jsonl(preference / "pairs-eval.jsonl", eval_pairs)
    for name, rows in _preference_layouts(train_pairs).items():
        _write_jsonl(preference / f"{name}-train.jsonl", rows)
    for name, rows in _preference_layouts(eval_pairs).items():
        _write_jsonl(preference / f"{name}-eval.jsonl", rows)


if __name__ == "__main__":
    main()
