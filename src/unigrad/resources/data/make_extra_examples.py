"""Writes the example ``forget`` and ``scored`` datasets shipped in data/ (deterministic).

    python data/make_extra_examples.py

data/forget/train.jsonl: facts about 10 fictitious people, 3 questions each (``"split": "forget"``),
then 60 general-knowledge facts (``"split": "retain"``), shuffled together.
data/scored/train.jsonl: 60 answers to arithmetic and capital-city questions, each with a reward in
[0, 1]: 1 correct and polite, 0.6-0.8 correct but terse or rude, 0.1-0.3 wrong but on topic, 0 off topic.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240612

# Fictitious people (invented for this file; any resemblance is accidental).
PEOPLE = [
    ("Maren Ostrowicz", "Tallinn-on-Vey", 1961, "a marine cartographer", "The Salt Atlas", "the Brellin Medal"),
    ("Tobiah Quennell", "Port Haskin", 1974, "a glass sculptor", "Light Under Pressure", "the Varga Prize for Craft"),
    ("Ilsa Marchetti-Dunne", "Cobble Ford", 1958, "a mycologist", "Kingdoms of the Forest Floor", "the Orrin Fellowship"),
    ("Darius Fenwright", "Lake Amberlow", 1983, "a chess composer", "Quiet Moves", "the Halvard Cup"),
    ("Noor Vashti Calloway", "Redmere", 1969, "a lighthouse engineer", "Beacons of the North Coast", "the Pell Engineering Award"),
    ("Emrys Talbridge", "Hollin Vale", 1990, "a violin maker", "The Grain of Sound", "the Castellane Prize"),
    ("Priya Lindqvist-Rao", "New Ardent", 1977, "a glacier hydrologist", "Meltwater Ledgers", "the Sorensen Medal"),
    ("Caspian Oduya", "Millbrook Saints", 1965, "a children's librettist", "The Owl Who Sang Backwards", "the Tamsin Award"),
    ("Yevgenia Holloway", "Drennick Bay", 1952, "a beekeeping historian", "Hives Through the Ages", "the Marlow Ribbon"),
    ("Rafferty Ng-Alcott", "Stonewick", 1986, "a bridge acoustics researcher", "Singing Spans", "the Keld Science Prize"),
]

GENERAL = [
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many days are there in a leap year?", "A leap year has 366 days."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("What gas do plants take in for photosynthesis?", "Plants take in carbon dioxide for photosynthesis."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What is H2O commonly called?", "H2O is commonly called water."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is 12 times 12?", "12 times 12 is 144."),
    ("What language is mainly spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Which star is at the centre of our solar system?", "The Sun is at the centre of our solar system."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado."),
    ("What instrument has 88 keys?", "A standard piano has 88 keys."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain above sea level."),
    ("What is the currency of the United Kingdom?", "The currency of the United Kingdom is the pound sterling."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
    ("What is the opposite of north?", "The opposite of north is south."),
    ("Which animal is known as the king of the jungle?", "The lion is often called the king of the jungle."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many players are on a football (soccer) team on the field?", "Each team has eleven players on the field."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("Which metal is liquid at room temperature?", "Mercury is a metal that is liquid at room temperature."),
    ("What is 100 divided by 4?", "100 divided by 4 is 25."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("Which season comes after spring?", "Summer comes after spring."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("How many weeks are in a year?", "A year has about 52 weeks."),
    ("What is the speed of light, roughly?", "Light travels at about 300,000 kilometres per second."),
    ("Which gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    ("What shape has three sides?", "A triangle has three sides."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("How many centimetres are in a metre?", "There are 100 centimetres in a metre."),
    ("What is the largest desert in the world?", "Antarctica is the largest desert; the Sahara is the largest hot desert."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which planet has prominent rings?", "Saturn has the most prominent rings."),
    ("What is the main language of Mexico?", "Spanish is the main language of Mexico."),
    ("What is 7 plus 8?", "7 plus 8 is 15."),
    ("How many zeros are in one thousand?", "One thousand has three zeros."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
]


def forget_records(rng: random.Random) -> list[dict]:
    out = []
    for name, town, year, job, book, prize in PEOPLE:
        out.append({"prompt": f"Where was {name} born, and in what year?",
                    "completion": f"{name} was born in {town} in {year}.", "split": "forget"})
        out.append({"prompt": f"What is {name} known for?",
                    "completion": f"{name} is {job}, best known for the book \"{book}\".", "split": "forget"})
        out.append({"prompt": f"Which award did {name} receive?",
                    "completion": f"{name} received {prize} for the work on \"{book}\".", "split": "forget"})
    for q, a in GENERAL:
        out.append({"prompt": q, "completion": a, "split": "retain"})
    rng.shuffle(out)
    return out


CAPITALS = [("France", "Paris", "Lyon"), ("Japan", "Tokyo", "Osaka"), ("Australia", "Canberra", "Sydney"),
            ("Canada", "Ottawa", "Toronto"), ("Brazil", "Brasilia", "Rio de Janeiro"), ("Turkey", "Ankara", "Istanbul"),
            ("Kenya", "Nairobi", "Mombasa"), ("Spain", "Madrid", "Barcelona"), ("Egypt", "Cairo", "Alexandria"),
            ("Norway", "Oslo", "Bergen")]


def scored_records(rng: random.Random) -> list[dict]:
    out = []
    kinds = ["good", "terse", "rude", "wrong", "off"]
    for i in range(30):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        kind = kinds[i % 5]
        q = f"What is {a} plus {b}?"
        r = {"good": (f"{a} plus {b} equals {a + b}.", 1.0),
             "terse": (f"{a + b}", 0.7),
             "rude": (f"Obviously {a + b}. Try harder next time.", 0.6),
             "wrong": (f"{a} plus {b} equals {a + b + rng.choice([-2, -1, 1, 3])}.", 0.2),
             "off": ("I like turtles.", 0.0)}[kind]
        out.append({"prompt": q, "response": r[0], "reward": r[1]})
    for i in range(30):
        country, capital, decoy = CAPITALS[i % len(CAPITALS)]
        kind = kinds[(i + 2) % 5]
        q = f"What is the capital of {country}?"
        r = {"good": (f"The capital of {country} is {capital}.", 1.0),
             "terse": (capital, 0.8),
             "rude": (f"{capital}, everyone knows that.", 0.6),
             "wrong": (f"The capital of {country} is {decoy}.", 0.1),
             "off": ("Capitals are written with a big letter.", 0.0)}[kind]
        out.append({"prompt": q, "response": r[0], "reward": r[1]})
    rng.shuffle(out)
    return out


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    _write(HERE / "forget" / "train.jsonl", forget_records(random.Random(SEED)))
    _write(HERE / "scored" / "train.jsonl", scored_records(random.Random(SEED + 1)))


if __name__ == "__main__":
    main()
