"""Writes the small example datasets shipped in data/ (deterministic; run from anywhere).

    python data/make_examples.py

data/pairs/{train,eval}.jsonl: preference pairs; the chosen answer is helpful and correct, the
rejected one is wrong, rude, unhelpful or off-topic.
data/sft/{train,eval}.jsonl: prompt/completion records, about 20% in "messages" form.
data/bad/*.jsonl: deliberately broken pairs files for error-message tests.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240611

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Mexico", "Mexico City"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Russia", "Moscow"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Colombia", "Bogota"), ("South Korea", "Seoul"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("New Zealand", "Wellington"),
    ("Morocco", "Rabat"), ("Nigeria", "Abuja"), ("Switzerland", "Bern"), ("Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Czechia", "Prague"),
]
# Big cities people often mistake for the capital.
DECOYS = {"Australia": "Sydney", "Canada": "Toronto", "Brazil": "Rio de Janeiro", "Turkey": "Istanbul",
          "Switzerland": "Zurich", "Morocco": "Casablanca", "Nigeria": "Lagos", "New Zealand": "Auckland",
          "India": "Mumbai", "Vietnam": "Ho Chi Minh City"}

DEFINITIONS = [
    ("photosynthesis", "the process by which plants use sunlight, water and carbon dioxide to make sugar and release oxygen"),
    ("gravity", "the force that pulls objects with mass toward each other, such as things falling toward Earth"),
    ("a verb", "a word that describes an action or a state, like run, think or be"),
    ("a noun", "a word that names a person, place, thing or idea"),
    ("an adjective", "a word that describes a noun, like tall, green or quiet"),
    ("evaporation", "the change of a liquid into a gas, such as water drying up in the sun"),
    ("a prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
    ("an atom", "the smallest unit of a chemical element, made of a nucleus and electrons"),
    ("inflation", "a general rise in prices over time, which means money buys less"),
    ("a budget", "a plan for how much money you expect to earn and spend over a period"),
    ("a mammal", "a warm-blooded animal with hair that feeds its young with milk"),
    ("a synonym", "a word that means the same or nearly the same as another word"),
    ("an antonym", "a word that means the opposite of another word"),
    ("a fraction", "a number that represents part of a whole, written like 3/4"),
    ("democracy", "a system of government in which citizens choose their leaders by voting"),
    ("an ecosystem", "a community of living things interacting with each other and their environment"),
    ("friction", "the force that resists motion when two surfaces rub against each other"),
    ("a volcano", "an opening in the Earth's crust through which molten rock, ash and gas escape"),
    ("a recipe", "a set of instructions and ingredients for preparing a dish"),
    ("an algorithm", "a step-by-step procedure for solving a problem or doing a task"),
    ("a metaphor", "a figure of speech that describes something as if it were something else"),
    ("a habitat", "the natural home where an animal or plant lives"),
    ("condensation", "the change of a gas into a liquid, like water drops forming on a cold glass"),
    ("an orbit", "the curved path an object follows around a planet or star"),
    ("a password", "a secret string of characters used to prove your identity to a computer system"),
    ("a dialect", "a form of a language spoken in a particular region or by a particular group"),
    ("erosion", "the slow wearing away of rock and soil by water, wind or ice"),
    ("a thermometer", "an instrument that measures temperature"),
]

FACTS = [
    ("How many days are in a week?", "There are seven days in a week.", "There are ten days in a week."),
    ("How many legs does a spider have?", "A spider has eight legs.", "A spider has six legs, like an ant."),
    ("What gas do humans need to breathe?", "Humans need oxygen to breathe.", "Humans need helium to breathe."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system.", "Mars is the largest planet in our solar system."),
    ("At what temperature does water boil at sea level?", "At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.", "Water boils at 50 degrees Celsius at sea level."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius, or 32 degrees Fahrenheit.", "Water freezes at 20 degrees Celsius."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth.", "The Moon is the closest star to Earth."),
    ("How many continents are there?", "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America.", "There are three continents."),
    ("What do bees make?", "Bees make honey from the nectar of flowers, and they also make wax.", "Bees make milk."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body.", "The lungs pump blood through the body."),
    ("What is the chemical symbol for water?", "The chemical formula for water is H2O: two hydrogen atoms and one oxygen atom.", "The chemical symbol for water is W."),
    ("How many hours are in a day?", "A day has 24 hours.", "A day has 12 hours."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet because of the iron oxide on its surface.", "Venus is known as the Red Planet."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa.", "The Thames is the longest river in Africa."),
    ("How many sides does a triangle have?", "A triangle has three sides.", "A triangle has four sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides.", "A hexagon has eight sides."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance.", "Chalk is the hardest natural substance."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths.", "Caterpillars turn into frogs."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean on Earth.", "The Arctic Ocean is the largest ocean."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour.", "There are 100 minutes in an hour."),
    ("What is the main source of energy for Earth?", "The Sun is the main source of energy for Earth.", "The Moon is the main source of energy for Earth."),
    ("Which animal is known as the king of the jungle?", "The lion is often called the king of the jungle.", "The rabbit is known as the king of the jungle."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings.", "A standard guitar has two strings."),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green.", "Mixing blue and yellow gives purple."),
    ("What color do you get by mixing red and white?", "Mixing red and white gives pink.", "Mixing red and white gives black."),
    ("How many months have 31 days?", "Seven months have 31 days: January, March, May, July, August, October and December.", "Only February has 31 days."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit.", "Water freezes at 0 degrees Fahrenheit."),
    ("Which is the smallest prime number?", "The smallest prime number is 2.", "The smallest prime number is 1."),
]

HOWTO = [
    ("How do I boil an egg?", "Place the egg in a pot of cold water, bring it to a boil, then simmer for 9 minutes and cool it in cold water."),
    ("How can I fall asleep faster?", "Keep a regular bedtime, avoid screens and caffeine late in the day, and keep your room dark, quiet and cool."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag in a cup, let it steep for three to five minutes, then remove the bag."),
    ("How do I remember a new word?", "Use it in a sentence, say it aloud a few times, and review it again the next day and a week later."),
    ("How do I save money each month?", "Write a simple budget, set aside a fixed amount on payday, and cut one regular expense you do not need."),
    ("How do I make a strong password?", "Use a long passphrase of several random words, avoid personal details, and never reuse it on other sites."),
    ("How do I water a houseplant?", "Water when the top few centimeters of soil feel dry, pour slowly until it drains, and empty the saucer."),
    ("How can I study more effectively?", "Study in short focused sessions, test yourself instead of rereading, and spread reviews over several days."),
    ("How do I start running?", "Begin with short walk-run intervals three times a week, go slowly enough to talk, and add a little each week."),
    ("How do I write a polite email?", "Start with a greeting, state your request clearly and briefly, thank the reader, and sign with your name."),
    ("How do I clean a cast iron pan?", "Rinse it with hot water and a brush, dry it right away on the stove, and rub in a thin layer of oil."),
    ("How do I reduce stress?", "Take regular breaks, get some exercise, sleep enough, and talk to someone you trust about what worries you."),
    ("How can I learn to type faster?", "Keep your fingers on the home row, practise a few minutes daily with a typing tutor, and focus on accuracy first."),
    ("How do I keep bread fresh?", "Store it in a bread box or paper bag at room temperature, or slice and freeze it for longer storage."),
    ("How do I prepare for a job interview?", "Research the company, practise answers to common questions aloud, and prepare two questions to ask them."),
    ("How do I plant tomato seeds?", "Sow seeds half a centimeter deep in moist seed compost, keep them warm and bright, and move seedlings outside after frost."),
]

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("early", "late"),
    ("full", "empty"), ("open", "closed"), ("strong", "weak"), ("high", "low"), ("wet", "dry"), ("young", "old"),
    ("loud", "quiet"), ("easy", "hard"), ("rich", "poor"), ("thick", "thin"), ("begin", "end"), ("buy", "sell"),
    ("push", "pull"), ("win", "lose"),
]

PAST_TENSE = [
    ("go", "went"), ("eat", "ate"), ("run", "ran"), ("write", "wrote"), ("swim", "swam"), ("see", "saw"),
    ("buy", "bought"), ("think", "thought"), ("teach", "taught"), ("sing", "sang"), ("fly", "flew"),
    ("take", "took"), ("speak", "spoke"), ("drink", "drank"), ("bring", "brought"), ("catch", "caught"),
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

CONVERSIONS = [
    # (from unit, to unit, factor, sample values)
    ("kilometers", "meters", 1000, [2, 3, 5, 7, 12]),
    ("meters", "centimeters", 100, [2, 4, 6, 9, 15]),
    ("kilograms", "grams", 1000, [2, 3, 4, 8, 10]),
    ("hours", "minutes", 60, [2, 3, 5, 8, 10]),
    ("minutes", "seconds", 60, [2, 4, 5, 7, 12]),
    ("liters", "milliliters", 1000, [2, 3, 5, 6, 9]),
    ("feet", "inches", 12, [2, 3, 4, 6, 10]),
    ("days", "hours", 24, [2, 3, 4, 5, 7]),
    ("weeks", "days", 7, [3, 4, 6, 8, 9]),
    ("dozen eggs", "eggs", 12, [2, 3, 4, 5, 7]),
]

RUDE = [
    "Figure it out yourself, this is not my problem.",
    "That is a silly question and I will not waste my time on it.",
    "Why would you even ask that? Look it up.",
    "Ugh, ask someone else. I am busy.",
    "Everyone knows that already. Try harder.",
    "Not answering that. Go away.",
]
UNHELPFUL = [
    "I don't know.",
    "Hard to say.",
    "It depends.",
    "Maybe. Maybe not.",
    "I would rather not answer that.",
    "Hmm, who can really know these things?",
]
OFF_TOPIC = [
    "My favourite colour is blue, and I enjoy long walks on the beach.",
    "Did you know that octopuses have three hearts? Anyway, have a nice day.",
    "Let me tell you about my weekend instead. I watched two films.",
    "Pizza is best with extra cheese, in my opinion.",
    "The weather has been lovely lately, hasn't it?",
    "I prefer talking about football. Who do you support?",
]


def _pick(rng: random.Random, options: list) -> str:
    return options[rng.randrange(len(options))]


def items(rng: random.Random) -> list[dict]:
    """Every (prompt, good answer, wrong answer) item; wrong is None where no factual error fits."""
    out = []
    capitals = [c for _, c in CAPITALS]
    for country, city in CAPITALS:
        prompt = _pick(rng, [f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                             f"Name the capital city of {country}."])
        wrong = DECOYS.get(country) or _pick(rng, [c for c in capitals if c != city])
        out.append(dict(prompt=prompt, good=f"The capital of {country} is {city}.", bad=f"The capital of {country} is {wrong}."))
    for word, meaning in DEFINITIONS:
        other = _pick(rng, [m for w, m in DEFINITIONS if w != word])
        prompt = _pick(rng, [f"What is {word}?", f"Define {word} in one sentence.", f"Explain what {word} is."])
        head = word[0].upper() + word[1:]
        out.append(dict(prompt=prompt, good=f"{head} is {meaning}.", bad=f"{head} is {other}."))
    for q, good, bad in FACTS:
        out.append(dict(prompt=q, good=good, bad=bad))
    for q, good in HOWTO:
        out.append(dict(prompt=q, good=good, bad=None))
    for word, opposite in OPPOSITES:
        wrong = _pick(rng, [w for w, _ in OPPOSITES if w != word])
        prompt = _pick(rng, [f"What is the opposite of \"{word}\"?", f"Give an antonym of the word \"{word}\"."])
        out.append(dict(prompt=prompt, good=f"The opposite of \"{word}\" is \"{opposite}\".", bad=f"The opposite of \"{word}\" is \"{wrong}\"."))
    for verb, past in PAST_TENSE:
        out.append(dict(prompt=f"What is the past tense of \"{verb}\"?", good=f"The past tense of \"{verb}\" is \"{past}\", as in \"Yesterday I {past}.\"",
                        bad=f"The past tense of \"{verb}\" is \"{verb}ed\"."))
    for i, day in enumerate(DAYS):
        nxt, wrong = DAYS[(i + 1) % 7], DAYS[(i + 3) % 7]
        out.append(dict(prompt=f"Which day comes after {day}?", good=f"{nxt} comes after {day}.", bad=f"{wrong} comes after {day}."))
    for i, month in enumerate(MONTHS):
        nxt, wrong = MONTHS[(i + 1) % 12], MONTHS[(i + 5) % 12]
        out.append(dict(prompt=f"What month comes after {month}?", good=f"{nxt} comes after {month}.", bad=f"{wrong} comes after {month}."))
    for src, dst, factor, values in CONVERSIONS:
        for v in values:
            prompt = _pick(rng, [f"How many {dst} are in {v} {src}?", f"Convert {v} {src} to {dst}."])
            out.append(dict(prompt=prompt, good=f"{v} {src} is {v * factor} {dst}, because each one is {factor} {dst}.",
                            bad=f"{v} {src} is {v * factor + _pick(rng, [1, 10, -2, factor])} {dst}."))
    seen = set()
    for _ in range(60):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = _pick(rng, ["+", "-", "*"])
        if op == "*":
            a, b = rng.randint(2, 15), rng.randint(2, 12)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        word = {"+": "plus", "-": "minus", "*": "times"}[op]
        prompt = _pick(rng, [f"What is {a} {op} {b}?", f"What is {a} {word} {b}?", f"Compute {a} {op} {b}."])
        out.append(dict(prompt=prompt, good=f"{a} {word} {b} equals {value}.", bad=f"{a} {word} {b} equals {value + _pick(rng, [1, -1, 2, 10, -10])}."))
    return out


def rejected(rng: random.Random, item: dict) -> str:
    """A bad answer: usually the wrong one; sometimes rude, unhelpful or off-topic."""
    kind = _pick(rng, ["wrong"] * 5 + ["rude", "unhelpful", "off_topic"]) if item["bad"] else _pick(rng, ["rude", "unhelpful", "off_topic"])
    return {"wrong": item["bad"], "rude": _pick(rng, RUDE), "unhelpful": _pick(rng, UNHELPFUL),
            "off_topic": _pick(rng, OFF_TOPIC)}.get(kind) or item["bad"]


SYSTEMS = ["You are a helpful assistant.", "You are a concise, friendly assistant. Answer in one or two sentences.",
           "You are a patient tutor who answers clearly."]


def pair_record(rng: random.Random, item: dict) -> dict:
    bad = rejected(rng, item)
    if rng.random() < 0.1:  # messages form
        prompt = [{"role": "system", "content": _pick(rng, SYSTEMS)}, {"role": "user", "content": item["prompt"]}]
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": item["good"]}],
                "rejected": [{"role": "assistant", "content": bad}]}
    return {"prompt": item["prompt"], "chosen": item["good"], "rejected": bad}


def sft_record(rng: random.Random, item: dict, previous: dict) -> dict:
    r = rng.random()
    if r < 0.12:
        return {"messages": [{"role": "system", "content": _pick(rng, SYSTEMS)}, {"role": "user", "content": item["prompt"]},
                             {"role": "assistant", "content": item["good"]}]}
    if r < 0.2:  # two turns: an earlier exchange, then this question
        return {"messages": [{"role": "user", "content": previous["prompt"]}, {"role": "assistant", "content": previous["good"]},
                             {"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": item["good"]}]}
    return {"prompt": item["prompt"], "completion": item["good"]}


def write_jsonl(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    pool = items(rng)
    seen, unique = set(), []
    for item in pool:
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            unique.append(item)
    # pairs: 200 train + 40 eval, disjoint prompts
    order = unique[:]
    rng.shuffle(order)
    pairs = [pair_record(rng, it) for it in order[:240]]
    write_jsonl(HERE / "pairs" / "train.jsonl", pairs[:200])
    write_jsonl(HERE / "pairs" / "eval.jsonl", pairs[200:240])
    # sft: another shuffle of the same content, 200 train + 40 eval, disjoint prompts
    order = unique[:]
    rng.shuffle(order)
    sft = [sft_record(rng, it, order[i - 1]) for i, it in enumerate(order[:240])]
    write_jsonl(HERE / "sft" / "train.jsonl", sft[:200])
    write_jsonl(HERE / "sft" / "eval.jsonl", sft[200:240])
    # bad: line 3 is invalid JSON; line 2 lacks "rejected"
    good = [{"prompt": "What is 2 + 2?", "chosen": "2 plus 2 equals 4.", "rejected": "2 plus 2 equals 5."},
            {"prompt": "Which day comes after Monday?", "chosen": "Tuesday comes after Monday.", "rejected": "I don't know."},
            {"prompt": "What is the capital of Italy?", "chosen": "The capital of Italy is Rome.", "rejected": "The capital of Italy is Milan."}]
    write_jsonl(HERE / "bad" / "malformed.jsonl", [good[0], good[1], '{"prompt": "What is 3 + 3?", "chosen": "3 plus 3 equals 6." "rejected": "7"}', good[2]])
    write_jsonl(HERE / "bad" / "missing_field.jsonl", [good[0], {"prompt": "What is 5 + 5?", "chosen": "5 plus 5 equals 10."}, good[2]])


if __name__ == "__main__":
    main()
