"""The surface forms the corpus draws from: people, things, actions, times of day and year."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Person:
    name: str
    subject: str  # "she" / "he"
    possessive: str  # "her" / "his"


_WOMEN = [
    "Natalia",
    "Betty",
    "Julie",
    "Alexis",
    "Tina",
    "Joy",
    "Carla",
    "Mia",
    "Priya",
    "Sofia",
    "Amara",
    "Elena",
    "Fatima",
    "Hana",
    "Zoe",
    "Chloe",
    "Aisha",
    "Nina",
    "Grace",
    "Lucy",
    "Maya",
    "Rosa",
    "Emma",
    "Yuki",
    "Sara",
    "Anna",
    "Lily",
    "Olivia",
    "Ava",
    "Isabel",
    "Leah",
    "Chen",
    "Mei",
    "Ingrid",
    "Nora",
    "Jasmine",
    "Kira",
    "Paula",
    "Wendy",
    "Layla",
]
_MEN = [
    "James",
    "Albert",
    "Ken",
    "Randy",
    "Mark",
    "Liam",
    "Omar",
    "Kenji",
    "Lucas",
    "Noah",
    "Diego",
    "Ravi",
    "Ethan",
    "Mateo",
    "Leo",
    "Sam",
    "Ivan",
    "Tom",
    "Ben",
    "Jack",
    "Ali",
    "Paul",
    "Max",
    "Carlos",
    "Hugo",
    "Felix",
    "Oscar",
    "Raj",
    "Daniel",
    "Peter",
    "Tariq",
    "Jonas",
    "Marco",
    "Victor",
    "Sean",
    "Adam",
    "Luis",
    "Theo",
    "Malik",
    "Arjun",
]
PEOPLE = tuple(Person(n, "she", "her") for n in _WOMEN) + tuple(
    Person(n, "he", "his") for n in _MEN
)


@dataclass(frozen=True)
class Activity:
    past: str  # "sold"
    base: str  # "sell"
    third: str  # "sells"
    things: tuple[str, ...]  # plural nouns that go with the verb


ACTIVITIES = (
    Activity(
        "sold", "sell", "sells", ("clips", "cookies", "tickets", "cupcakes", "candles", "hats")
    ),
    Activity(
        "collected", "collect", "collects", ("stamps", "shells", "stickers", "cards", "rocks")
    ),
    Activity("baked", "bake", "bakes", ("cookies", "muffins", "cupcakes", "pies", "brownies")),
    Activity("picked", "pick", "picks", ("apples", "oranges", "strawberries", "peaches", "lemons")),
    Activity("read", "read", "reads", ("pages", "books", "stories", "poems")),
    Activity("planted", "plant", "plants", ("trees", "tulips", "roses", "seeds", "bushes")),
    Activity("made", "make", "makes", ("bracelets", "necklaces", "paper cranes", "kites")),
    Activity("wrote", "write", "writes", ("letters", "poems", "emails", "postcards")),
    Activity("found", "find", "finds", ("shells", "coins", "acorns", "feathers", "marbles")),
    Activity("painted", "paint", "paints", ("pictures", "rocks", "fences", "birdhouses")),
    Activity("caught", "catch", "catches", ("fish", "crabs", "butterflies")),
    Activity("folded", "fold", "folds", ("shirts", "towels", "paper planes", "napkins")),
)

# Things a person can simply own, gain and give away.
BELONGINGS = [
    "marbles",
    "stickers",
    "pencils",
    "crayons",
    "apples",
    "cookies",
    "candies",
    "coins",
    "stamps",
    "cards",
    "books",
    "toys",
    "beads",
    "balloons",
    "shells",
    "buttons",
    "erasers",
    "grapes",
    "oranges",
    "eggs",
    "muffins",
    "blocks",
    "ribbons",
    "rocks",
    "cherries",
    "peanuts",
    "tokens",
    "seeds",
    "dolls",
    "magnets",
]

GAINS = (
    ("buys", "bought"),
    ("finds", "found"),
    ("gets", "got"),
    ("wins", "won"),
    ("receives", "received"),
    ("collects", "collected"),
)
LOSSES = (
    ("gives away", "gave away"),
    ("loses", "lost"),
    ("sells", "sold"),
    ("trades away", "traded away"),
    ("uses", "used"),
    ("donates", "donated"),
)


@dataclass(frozen=True)
class Period:
    phrase: str  # as written in the question: "in April"
    label: str  # as written at the start of a reasoning line: "April"


_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PERIOD_PAIRS: tuple[tuple[Period, Period], ...] = (
    tuple(
        (Period(f"in {a}", a), Period(f"in {b}", b))
        for a, b in zip(_MONTHS, _MONTHS[1:], strict=False)
    )
    + tuple(
        (Period(f"on {a}", a), Period(f"on {b}", b)) for a, b in zip(_DAYS, _DAYS[1:], strict=False)
    )
    + (
        (Period("in the morning", "Morning"), Period("in the afternoon", "Afternoon")),
        (Period("last week", "Last week"), Period("this week", "This week")),
        (Period("yesterday", "Yesterday"), Period("today", "Today")),
        (Period("last year", "Last year"), Period("this year", "This year")),
        (Period("on the first day", "First day"), Period("on the second day", "Second day")),
    )
)

CONTAINERS = (
    ("boxes", "box"),
    ("bags", "bag"),
    ("jars", "jar"),
    ("baskets", "basket"),
    ("packs", "pack"),
    ("trays", "tray"),
    ("crates", "crate"),
    ("bowls", "bowl"),
    ("shelves", "shelf"),
    ("rows", "row"),
)

PRICED_ITEMS = [
    "notebooks",
    "books",
    "shirts",
    "toys",
    "tickets",
    "lamps",
    "plants",
    "mugs",
    "puzzles",
    "scarves",
    "games",
    "pens",
    "bottles",
    "chairs",
    "towels",
    "caps",
]
BILLS = (10, 20, 50, 100, 200, 500, 1000)

FRIEND_GROUPS = ("friends", "classmates", "cousins", "teammates", "neighbors", "students")
