"""Writes embed.jsonl, the demo corpus `cargo xtask run` submits to EMBED-MINILM-L6.

Deterministic (a fixed seed, no network): `python3 xtask/demo/make_corpus.py` rewrites the same
bytes. 3,000 short English sentences = 3 units of the market (1,000 inputs each).
"""
import json
import pathlib
import random

SUBJECTS = [
    "The night shift", "A small studio", "Our render farm", "The weather station", "A tired baker",
    "The river ferry", "A patient teacher", "The city library", "An old lighthouse", "The hiking club",
    "A street musician", "The research team", "My grandmother", "The morning train", "A curious child",
    "The harbour crane", "A local farmer", "The school choir", "The data centre", "A quiet neighbour",
]
VERBS = [
    "finished", "postponed", "described", "repaired", "photographed", "measured", "painted",
    "recorded", "ordered", "explained", "discovered", "cleaned", "delivered", "translated", "sorted",
]
OBJECTS = [
    "the summer schedule", "a batch of terrain tiles", "the broken window", "three loaves of rye bread",
    "the evening forecast", "a map of the coast", "the new embedding model", "a crate of apples",
    "the concert programme", "the lost umbrella", "a long report on tides", "the garden fence",
    "the monthly invoices", "a quiet melody", "the mountain trail",
]
TAILS = [
    "before the storm arrived.", "after a long week.", "with surprising care.", "in record time.",
    "while everyone else slept.", "despite the rain.", "for the first time.", "on a cold Tuesday.",
    "without any help.", "as the sun went down.", "just before noon.", "to everyone's delight.",
]


def main() -> None:
    rng = random.Random(20261203)
    seen = set()
    lines = []
    while len(lines) < 3000:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"
        if s in seen:
            continue
        seen.add(s)
        lines.append(json.dumps({"custom_id": f"s{len(lines):04d}", "input": s}, separators=(",", ":")))
    out = pathlib.Path(__file__).with_name("embed.jsonl")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
