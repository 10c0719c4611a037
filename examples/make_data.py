"""Build the small example datasets the quickstart jobs train on (deterministic; rerun to refresh).

The records are templated tasks with a learnable structure (arithmetic, capitals, word edits), so a
135M model shows a clear drop in held-out loss within a few minutes on a CPU. Run:
    python examples/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Egypt": "Cairo", "Kenya": "Nairobi", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens", "Turkey": "Ankara",
    "Peru": "Lima", "Chile": "Santiago", "Australia": "Canberra", "Ireland": "Dublin", "Austria": "Vienna",
    "Hungary": "Budapest", "Denmark": "Copenhagen", "Belgium": "Brussels", "Netherlands": "Amsterdam",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Nigeria": "Abuja", "Morocco": "Rabat", "Cuba": "Havana",
    "Iceland": "Reykjavik", "Czechia": "Prague", "Romania": "Bucharest", "Colombia": "Bogota",
}
WORDS = ["red", "green", "blue", "apple", "river", "stone", "cloud", "tiger", "paper", "light", "music",
         "garden", "window", "silver", "forest", "ocean", "candle", "rocket", "bridge", "pencil"]
ANTONYMS = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "early": "late", "light": "dark",
            "open": "closed", "old": "new", "rich": "poor", "strong": "weak", "full": "empty", "high": "low"}


def _alpaca(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        return {"instruction": f"What is {a} + {b}?", "input": "", "output": f"{a} + {b} = {a + b}."}
    if kind == 1:
        country = rng.choice(sorted(CAPITALS))
        return {"instruction": f"What is the capital of {country}?", "input": "",
                "output": f"The capital of {country} is {CAPITALS[country]}."}
    if kind == 2:
        words = rng.sample(WORDS, rng.randint(3, 5))
        return {"instruction": "Reverse the order of the words.", "input": " ".join(words),
                "output": " ".join(reversed(words))}
    if kind == 3:
        words = rng.sample(WORDS, rng.randint(2, 4))
        return {"instruction": "Write the text in uppercase.", "input": " ".join(words),
                "output": " ".join(words).upper()}
    if kind == 4:
        numbers = rng.sample(range(1, 100), rng.randint(3, 6))
        return {"instruction": "Sort the numbers in ascending order.", "input": ", ".join(map(str, numbers)),
                "output": ", ".join(map(str, sorted(numbers)))}
    word = rng.choice(sorted(ANTONYMS))
    return {"instruction": f"Give the opposite of the word '{word}'.", "input": "",
            "output": f"The opposite of '{word}' is '{ANTONYMS[word]}'."}


def _to_messages(record: dict[str, str]) -> list[dict[str, str]]:
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def _pair(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        country = rng.choice(sorted(CAPITALS))
        return {"query": f"capital city of {country}", "positive": f"{CAPITALS[country]} is the capital of {country}.",
                "negative": f"{CAPITALS[rng.choice([c for c in CAPITALS if c != country])]} is a capital city."}
    if kind == 1:
        word = rng.choice(sorted(ANTONYMS))
        return {"query": f"opposite of {word}", "positive": f"'{ANTONYMS[word]}' is the antonym of '{word}'.",
                "negative": f"'{word}' means {word}."}
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return {"query": f"sum of {a} and {b}", "positive": f"{a} plus {b} equals {a + b}.",
            "negative": f"{a} minus {b} equals {a - b}."}


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20261122)
    alpaca = [_alpaca(rng) for _ in range(460)]
    _write_jsonl(OUT / "sft" / "alpaca-train.jsonl", alpaca[:400])
    _write_jsonl(OUT / "sft" / "alpaca-eval.jsonl", alpaca[400:])
    (OUT / "sft" / "messages.json").write_text(
        json.dumps({"data": [{"messages": _to_messages(r)} for r in alpaca[:120]]}, indent=1), encoding="utf-8")
    sharegpt = [{"conversations": [{"from": "system", "value": "You are a concise assistant."}]
                 + [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in _to_messages(r)]}
                for r in alpaca[:120]]
    (OUT / "sft" / "sharegpt.json").write_text(json.dumps(sharegpt, indent=1), encoding="utf-8")
    _write_jsonl(OUT / "sft" / "text.jsonl",
                 [{"text": f"Q: {r['instruction']} {r['input']}\nA: {r['output']}"} for r in alpaca[:120]])

    pairs = [_pair(rng) for _ in range(360)]
    _write_jsonl(OUT / "embed" / "pairs-train.jsonl", [{"query": p["query"], "positive": p["positive"]} for p in pairs[:300]])
    _write_jsonl(OUT / "embed" / "pairs-eval.jsonl", [{"query": p["query"], "positive": p["positive"]} for p in pairs[300:]])
    _write_jsonl(OUT / "embed" / "triplets.jsonl", pairs[:200])
    scored = []
    for p in pairs[:200]:
        scored.append({"sentence1": p["query"], "sentence2": p["positive"], "score": 1.0})
        scored.append({"sentence1": p["query"], "sentence2": p["negative"], "score": 0.2})
    _write_jsonl(OUT / "embed" / "scored-pairs.jsonl", scored)
    multitask = [{**{"query": p["query"], "positive": p["positive"]}, "task": "retrieval" if i % 2 else "text-matching"}
                 for i, p in enumerate(pairs[:200])]
    _write_jsonl(OUT / "embed" / "multitask.jsonl", multitask)


if __name__ == "__main__":
    main()
