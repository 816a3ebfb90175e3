"""Writes the made-up data of the task-file example (tasks.yaml beside it), deterministically:

- reviews-{train,dev}.csv: product-review polarity, columns id, review, polarity (negative/positive);
- topics-{train,dev}.jsonl: whether two short texts are on the same topic, fields id, first, second,
  label (different/same).

Sentences are drawn from small templates with a fixed seed, so running it again writes the same bytes:
    python examples/task-file/make_data.py
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRODUCTS = ["kettle", "blender", "desk lamp", "backpack", "phone case", "coffee grinder", "headphones", "toaster",
            "office chair", "water bottle", "keyboard", "rain jacket"]
GOOD = ["works perfectly", "is sturdy and well made", "exceeded my expectations", "was worth every penny",
        "arrived quickly and works great", "is quiet and easy to clean", "feels solid", "still works after months"]
BAD = ["broke after a week", "feels cheap and flimsy", "stopped working on day two", "was a waste of money",
       "arrived damaged", "is far too loud", "smells of plastic", "never charged properly"]
OPENINGS = ["The {p} {v}.", "Honestly, this {p} {v}.", "My new {p} {v}.", "I bought the {p} and it {v}."]
CLOSINGS = {"positive": ["Would buy again.", "Highly recommended.", "Five stars.", ""],
            "negative": ["Would not buy again.", "Returning it.", "One star.", ""]}
TOPICS = {
    "sport": ["The striker scored twice in the second half.", "Our team lost the final on penalties.",
              "She ran the marathon in under three hours.", "The coach changed the line-up before the match.",
              "He trains at the swimming pool every morning.", "The referee sent off two players."],
    "cooking": ["Simmer the sauce for twenty minutes.", "Add a pinch of salt to the dough.",
                "The soup needs more garlic.", "Roast the vegetables until golden.",
                "Whisk the eggs with the sugar.", "Let the bread rise overnight."],
    "weather": ["Heavy rain is expected tomorrow.", "It was the hottest day of the year.",
                "Snow closed the mountain roads.", "A strong wind blew all night.",
                "The forecast says sunny spells.", "Fog delayed the morning flights."],
    "money": ["Interest rates rose again this month.", "The shares fell after the report.",
              "She opened a savings account.", "The bank raised its fees.",
              "Inflation slowed in the spring.", "He pays off his loan every month."],
}


def reviews(rng: random.Random, count: int, start: int) -> list[dict]:
    rows = []
    for i in range(count):
        polarity = rng.choice(["negative", "positive"])
        verb = rng.choice(GOOD if polarity == "positive" else BAD)
        text = rng.choice(OPENINGS).format(p=rng.choice(PRODUCTS), v=verb)
        closing = rng.choice(CLOSINGS[polarity])
        rows.append({"id": f"r{start + i:04d}", "review": f"{text} {closing}".strip(), "polarity": polarity})
    return rows


def topics(rng: random.Random, count: int, start: int) -> list[dict]:
    rows, names = [], sorted(TOPICS)
    for i in range(count):
        same = rng.random() < 0.5
        first_topic = rng.choice(names)
        second_topic = first_topic if same else rng.choice([t for t in names if t != first_topic])
        first, second = rng.choice(TOPICS[first_topic]), rng.choice(TOPICS[second_topic])
        rows.append({"id": f"t{start + i:04d}", "first": first, "second": second,
                     "label": "same" if same else "different"})
    return rows


def main() -> None:
    rng = random.Random(2026)
    for split, count, start in (("train", 240, 0), ("dev", 60, 1000)):
        with open(HERE / f"reviews-{split}.csv", "w", newline="", encoding="utf-8") as fp:
            writer = csv.DictWriter(fp, fieldnames=["id", "review", "polarity"])
            writer.writeheader()
            writer.writerows(reviews(rng, count, start))
        with open(HERE / f"topics-{split}.jsonl", "w", encoding="utf-8") as fp:
            fp.writelines(json.dumps(row) + "\n" for row in topics(rng, count, start))


if __name__ == "__main__":
    main()
