"""Short math word problems in Fathom's style, each with a worked reasoning and a boxed answer.

Every problem kind draws its people, things, times and question wording at random and writes the
reasoning as labelled facts ("April: 48 clips.") plus worked arithmetic from `Worksheet`. The
held-out split is by the problem's numbers: a stable hash of (kind, numbers) sends about one tuple
in ten to evaluation only, so no evaluation problem shares its numbers with a training problem of
its kind, whatever the seed.

    python -m training.corpus --count 5 --seed 1        # print a few samples
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from training.arithmetic import Worksheet
from training.wording import (
    ACTIVITIES,
    BELONGINGS,
    BILLS,
    CONTAINERS,
    FRIEND_GROUPS,
    GAINS,
    LOSSES,
    PEOPLE,
    PERIOD_PAIRS,
    PRICED_ITEMS,
)

HELD_OUT_BUCKETS = 10  # one (kind, numbers) tuple in this many is evaluation-only


@dataclass(frozen=True)
class Problem:
    kind: str
    question: str
    reasoning: str  # the text inside <think>...</think>, without the tags
    answer_text: str  # the visible answer after </think>, ending in \boxed{N}
    answer: int
    numbers: tuple[int, ...]

    @property
    def held_out(self) -> bool:
        return is_held_out(self.kind, self.numbers)


def is_held_out(kind: str, numbers: tuple[int, ...]) -> bool:
    digest = hashlib.sha256(f"{kind}:{numbers}".encode()).digest()
    return digest[0] % HELD_OUT_BUCKETS == 0


def _finish(
    kind: str,
    question: str,
    facts: list[str],
    conclusion: str,
    answer: int,
    numbers: tuple[int, ...],
) -> Problem:
    # The reasoning opens by restating the problem, as R1 models do. For a tiny model this is
    # also the cheapest way to learn copying from the prompt: every fact line below then copies
    # its names and numbers from this nearby restatement.
    reasoning = "\n".join([question, *facts, conclusion])
    answer_text = f"{conclusion}\n\n\\boxed{{{answer}}}"
    return Problem(kind, question, reasoning, answer_text, answer, numbers)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- problem kinds -------------------------------------------------------------------------


def two_periods(rng: random.Random) -> Problem:
    """Natalia's problem: an amount, a related amount later, and the total."""
    person = rng.choice(PEOPLE)
    act = rng.choice(ACTIVITIES)
    thing = rng.choice(act.things)
    first, second = rng.choice(PERIOD_PAIRS)
    relation = rng.choice(("half", "twice", "three", "more", "fewer"))
    a = rng.randint(4, 99) if rng.random() < 0.8 else rng.randint(100, 499)
    k = 0
    if relation == "half":
        a += a % 2
        related = f"half as many {thing}"
    elif relation == "twice":
        related = f"twice as many {thing}"
    elif relation == "three":
        related = f"three times as many {thing}"
    elif relation == "more":
        k = rng.randint(2, 60)
        related = f"{k} more {thing}"
    else:
        k = rng.randint(1, a - 1)
        related = f"{k} fewer {thing}"
    ask_total = rng.random() < 0.8
    s = person.subject
    opening = rng.choice(
        (
            f"{person.name} {act.past} {a} {thing} {first.phrase}, and then {s} {act.past} "
            f"{related} {second.phrase}.",
            f"{_cap(first.phrase)}, {person.name} {act.past} {a} {thing}. {_cap(second.phrase)}, "
            f"{s} {act.past} {related}.",
            f"{person.name} {act.past} {a} {thing} {first.phrase}. {_cap(second.phrase)} {s} "
            f"{act.past} {related} than that.",
        )
    )
    if ask_total:
        ending = rng.choice(("altogether", "in total", "in all"))
        ask = f"How many {thing} did {person.name} {act.base} {ending}?"
    else:
        ask = f"How many {thing} did {person.name} {act.base} {second.phrase}?"
    question = f"{opening} {ask}"

    sheet = Worksheet()
    sheet.lines.append(f"{first.label}: {a} {thing}.")
    if relation == "half":
        sheet.lines.append(f"{second.label}: half as many, {a}/2.")
        b = sheet.divide(a, 2)
    elif relation == "twice":
        sheet.lines.append(f"{second.label}: twice as many, {a}×2.")
        b = sheet.multiply(a, 2)
    elif relation == "three":
        sheet.lines.append(f"{second.label}: three times as many, {a}×3.")
        b = sheet.multiply(a, 3)
    elif relation == "more":
        sheet.lines.append(f"{second.label}: {k} more, {a}+{k}.")
        b = sheet.add(a, k)
    else:
        sheet.lines.append(f"{second.label}: {k} fewer, {a}-{k}.")
        b = sheet.subtract(a, k)
    sheet.lines.append(f"{second.label}: {b} {thing}.")
    if ask_total:
        sheet.lines.append(f"Altogether: {a}+{b}.")
        answer = sheet.add(a, b)
        conclusion = f"{person.name} {act.past} {answer} {thing} {ending}."
    else:
        answer = b
        conclusion = f"{person.name} {act.past} {answer} {thing} {second.phrase}."
    numbers = (a, k, ["half", "twice", "three", "more", "fewer"].index(relation), int(ask_total))
    return _finish("two_periods", question, sheet.lines, conclusion, answer, numbers)


def gain_then_lose(rng: random.Random) -> Problem:
    person = rng.choice(PEOPLE)
    thing = rng.choice(BELONGINGS)
    gain_now, gain_past = rng.choice(GAINS)
    loss_now, loss_past = rng.choice(LOSSES)
    a = rng.randint(5, 99) if rng.random() < 0.7 else rng.randint(100, 999)
    b = rng.randint(2, 99) if rng.random() < 0.8 else rng.randint(100, 500)
    c = rng.randint(1, a + b)
    s = person.subject
    past = rng.random() < 0.5
    if past:
        question = rng.choice(
            (
                f"{person.name} had {a} {thing}. {_cap(s)} {gain_past} {b} more {thing} and then "
                f"{loss_past} {c} of them. How many {thing} does {person.name} have now?",
                f"{person.name} had {a} {thing}, {gain_past} {b} more, and then {loss_past} {c}. "
                f"How many {thing} does {s} have left?",
            )
        )
    else:
        question = rng.choice(
            (
                f"{person.name} has {a} {thing}. {_cap(s)} {gain_now} {b} more {thing} and then "
                f"{loss_now} {c} of them. How many {thing} does {person.name} have now?",
                f"{person.name} has {a} {thing}. After {s} {gain_now} {b} more, {s} {loss_now} "
                f"{c}. How many {thing} are left?",
            )
        )
    sheet = Worksheet()
    sheet.lines.append(f"Start: {a} {thing}.")
    sheet.lines.append(f"Gained {b}: {a}+{b}.")
    total = sheet.add(a, b)
    sheet.lines.append(f"Now: {total} {thing}.")
    sheet.lines.append(f"Lost {c}: {total}-{c}.")
    answer = sheet.subtract(total, c)
    conclusion = f"{person.name} has {answer} {thing} left."
    return _finish("gain_then_lose", question, sheet.lines, conclusion, answer, (a, b, c))


def groups(rng: random.Random) -> Problem:
    person = rng.choice(PEOPLE)
    thing = rng.choice(BELONGINGS)
    plural, single = rng.choice(CONTAINERS)
    n = rng.randint(2, 9)
    m = rng.randint(3, 99) if rng.random() < 0.85 else rng.randint(100, 250)
    give = rng.random() < 0.4
    c = rng.randint(1, m * n) if give else 0
    s = person.subject
    opening = rng.choice(
        (
            f"{person.name} has {n} {plural} of {thing}. Each {single} holds {m} {thing}.",
            f"{person.name} has {n} {plural} with {m} {thing} in each {single}.",
            f"There are {m} {thing} in each {single}, and {person.name} has {n} {plural}.",
        )
    )
    if give:
        ask = f"{_cap(s)} gives away {c} {thing}. How many {thing} does {s} have left?"
    else:
        ask = f"How many {thing} does {person.name} have in all?"
    sheet = Worksheet()
    sheet.lines.append(f"{n} {plural} with {m} each: {m}×{n}.")
    total = sheet.multiply(m, n)
    sheet.lines.append(f"In all: {total} {thing}.")
    if give:
        sheet.lines.append(f"Gave away {c}: {total}-{c}.")
        answer = sheet.subtract(total, c)
        conclusion = f"{person.name} has {answer} {thing} left."
    else:
        answer = total
        conclusion = f"{person.name} has {answer} {thing} in all."
    return _finish("groups", f"{opening} {ask}", sheet.lines, conclusion, answer, (n, m, c))


def change_from_bill(rng: random.Random) -> Problem:
    person = rng.choice(PEOPLE)
    item = rng.choice(PRICED_ITEMS)
    n = rng.randint(2, 9)
    price = rng.randint(2, 99)
    cost = price * n
    bill = rng.choice([b for b in BILLS if b >= cost][:3])
    s = person.subject
    question = rng.choice(
        (
            f"{person.name} buys {n} {item} for ${price} each and pays with a ${bill} bill. "
            f"How much change does {s} get?",
            f"Each of the {item} costs ${price}. {person.name} buys {n} of them and pays with "
            f"${bill}. How many dollars of change does {s} get back?",
        )
    )
    sheet = Worksheet()
    sheet.lines.append(f"{n} {item} at ${price} each: {price}×{n}.")
    sheet.multiply(price, n)
    sheet.lines.append(f"Cost: ${cost}.")
    sheet.lines.append(f"Change from ${bill}: {bill}-{cost}.")
    answer = sheet.subtract(bill, cost)
    conclusion = f"{person.name} gets ${answer} in change."
    return _finish("change_from_bill", question, sheet.lines, conclusion, answer, (n, price, bill))


def share_equally(rng: random.Random) -> Problem:
    person = rng.choice(PEOPLE)
    thing = rng.choice(BELONGINGS)
    group = rng.choice(FRIEND_GROUPS)
    k = rng.randint(2, 9)
    each = rng.randint(2, 60)
    keep = rng.randint(1, 40) if rng.random() < 0.4 else 0
    shared = k * each
    a = shared + keep
    s = person.subject
    if keep:
        reflexive = "herself" if person.subject == "she" else "himself"
        question = (
            f"{person.name} has {a} {thing}. {_cap(s)} keeps {keep} for {reflexive} "
            f"and shares the rest equally among {k} {group}. How many {thing} does each get?"
        )
    else:
        question = rng.choice(
            (
                f"{person.name} has {a} {thing} and shares them equally among {k} {group}. "
                f"How many {thing} does each get?",
                f"{person.name} splits {a} {thing} equally between {k} {group}. How many {thing} "
                f"does each of them get?",
            )
        )
    sheet = Worksheet()
    if keep:
        sheet.lines.append(f"Start: {a} {thing}, keeps {keep}: {a}-{keep}.")
        sheet.subtract(a, keep)
        sheet.lines.append(f"To share: {shared} {thing}.")
    sheet.lines.append(f"Shared among {k}: {shared}/{k}.")
    answer = sheet.divide(shared, k)
    conclusion = f"Each of the {group} gets {answer} {thing}."
    return _finish("share_equally", question, sheet.lines, conclusion, answer, (a, k, keep))


def two_people(rng: random.Random) -> Problem:
    first, second = rng.sample(PEOPLE, 2)
    thing = rng.choice(BELONGINGS)
    relation = rng.choice(("more", "fewer", "twice"))
    a = rng.randint(5, 99) if rng.random() < 0.8 else rng.randint(100, 400)
    k = (
        rng.randint(2, 80)
        if relation == "more"
        else rng.randint(1, a - 1)
        if relation == "fewer"
        else 0
    )
    related = {
        "more": f"{k} more {thing} than {first.name}",
        "fewer": f"{k} fewer {thing} than {first.name}",
        "twice": f"twice as many {thing} as {first.name}",
    }[relation]
    question = f"{first.name} has {a} {thing}. {second.name} has {related}. " + rng.choice(
        (
            f"How many {thing} do they have together?",
            f"How many {thing} do {first.name} and {second.name} have in total?",
        )
    )
    sheet = Worksheet()
    sheet.lines.append(f"{first.name}: {a} {thing}.")
    if relation == "more":
        sheet.lines.append(f"{second.name}: {k} more, {a}+{k}.")
        b = sheet.add(a, k)
    elif relation == "fewer":
        sheet.lines.append(f"{second.name}: {k} fewer, {a}-{k}.")
        b = sheet.subtract(a, k)
    else:
        sheet.lines.append(f"{second.name}: twice as many, {a}×2.")
        b = sheet.multiply(a, 2)
    sheet.lines.append(f"{second.name}: {b} {thing}.")
    sheet.lines.append(f"Together: {a}+{b}.")
    answer = sheet.add(a, b)
    conclusion = f"Together they have {answer} {thing}."
    numbers = (a, k, ["more", "fewer", "twice"].index(relation))
    return _finish("two_people", question, sheet.lines, conclusion, answer, numbers)


def daily_rate(rng: random.Random) -> Problem:
    person = rng.choice(PEOPLE)
    act = rng.choice(ACTIVITIES)
    thing = rng.choice(act.things)
    a = rng.randint(2, 99) if rng.random() < 0.85 else rng.randint(100, 300)
    week = rng.random() < 0.25
    days = 7 if week else rng.randint(2, 9)
    span = "a week" if week else f"{days} days"
    question = (
        f"{person.name} {act.third} {a} {thing} every day. How many {thing} does "
        f"{person.subject} {act.base} in {span}?"
    )
    sheet = Worksheet()
    if week:
        sheet.lines.append("A week has 7 days.")
    sheet.lines.append(f"{a} each day for {days} days: {a}×{days}.")
    answer = sheet.multiply(a, days)
    conclusion = f"{person.name} {act.third} {answer} {thing} in {span}."
    return _finish("daily_rate", question, sheet.lines, conclusion, answer, (a, days))


def give_fraction(rng: random.Random) -> Problem:
    person, other = rng.sample(PEOPLE, 2)
    thing = rng.choice(BELONGINGS)
    word, d = rng.choice((("half", 2), ("a third", 3), ("a quarter", 4)))
    a = d * rng.randint(3, 99)
    question = (
        f"{person.name} had {a} {thing} and gave {word} of them to {other.name}. "
        f"How many {thing} does {person.name} have left?"
    )
    sheet = Worksheet()
    sheet.lines.append(f"Start: {a} {thing}.")
    sheet.lines.append(f"Gave {word}: {a}/{d}.")
    given = sheet.divide(a, d)
    sheet.lines.append(f"Gave: {given} {thing}.")
    sheet.lines.append(f"Left: {a}-{given}.")
    answer = sheet.subtract(a, given)
    conclusion = f"{person.name} has {answer} {thing} left."
    return _finish("give_fraction", question, sheet.lines, conclusion, answer, (a, d))


def direct(rng: random.Random) -> Problem:
    """A bare calculation, as people first try a chat model ("What is 17 + 25?")."""
    op = rng.choice(("+", "-", "×", "/"))
    if op == "+":
        a, b = rng.randint(2, 999), rng.randint(2, 999)
    elif op == "-":
        a = rng.randint(10, 999)
        b = rng.randint(1, a)
    elif op == "×":
        a, b = rng.randint(2, 999), rng.randint(2, 9)
    else:
        b = rng.randint(2, 9)
        a = b * rng.randint(2, 150)
    spoken = {"+": "plus", "-": "minus", "×": "times", "/": "divided by"}[op]
    written = {"+": "+", "-": "-", "×": "*", "/": "/"}[op]
    question = rng.choice(
        (
            f"What is {a} {written} {b}?",
            f"What is {a} {spoken} {b}?",
            f"Compute {a} {written} {b}.",
            f"Calculate {a} {spoken} {b}.",
        )
    )
    sheet = Worksheet()
    work = {"+": sheet.add, "-": sheet.subtract, "×": sheet.multiply, "/": sheet.divide}[op]
    answer = work(a, b)
    conclusion = f"{a} {written} {b} = {answer}."
    numbers = (a, b, "+-×/".index(op))
    return _finish("direct", question, sheet.lines, conclusion, answer, numbers)


KINDS: dict[str, Callable[[random.Random], Problem]] = {
    "two_periods": two_periods,
    "gain_then_lose": gain_then_lose,
    "groups": groups,
    "change_from_bill": change_from_bill,
    "share_equally": share_equally,
    "two_people": two_people,
    "daily_rate": daily_rate,
    "give_fraction": give_fraction,
    "direct": direct,
}


def problems(seed: int, *, held_out: bool) -> Iterator[Problem]:
    """An endless stream from one side of the split: training (held_out=False) or evaluation."""
    rng = random.Random(seed)
    makers = list(KINDS.values())
    seen: set[str] = set()
    while True:
        problem = rng.choice(makers)(rng)
        if problem.held_out != held_out or problem.question in seen:
            continue
        seen.add(problem.question)
        yield problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--held-out", action="store_true")
    args = parser.parse_args()
    stream = problems(args.seed, held_out=args.held_out)
    for _ in range(args.count):
        p = next(stream)
        print(f"Q: {p.question}\n<think>\n{p.reasoning}\n</think>\n\n{p.answer_text}\n{'-' * 60}")


if __name__ == "__main__":
    main()
