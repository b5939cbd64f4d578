"""Hard negatives for the guard evaluation set: strings that look like PII or secrets but are not.

Each generator returns text that must produce no detection. They are chosen to defeat shape-only
regexes: Luhn-failing numbers with real card prefixes in card grouping, IBANs with one wrong digit,
reserved SSN areas, dotted quads out of range, dates, timestamps, versions, ids, hashes, prices.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from datetime import UTC, date, datetime
from random import Random

from faker import Faker

from margin.guard.evalvalues import group_digits, rand_text

NegativeFactory = Callable[[Faker, Random], str]

# Fixed ranges: Faker's defaults are relative to "now", which would make the set change from run to run.
_FIRST_DAY, _LAST_DAY = date(2015, 1, 1), date(2025, 12, 31)
_FIRST_MOMENT, _LAST_MOMENT = datetime(2020, 1, 1, tzinfo=UTC), datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)


def order_number(fake: Faker, rng: Random) -> str:
    digits = string.digits
    return rng.choice(
        (
            f"ORD-{rand_text(rng, digits, 8)}",
            f"#{rand_text(rng, digits, rng.randrange(7, 11))}",
            f"{rng.randrange(100, 999)}-{rand_text(rng, digits, 7)}-{rand_text(rng, digits, 7)}",
            f"SO{rand_text(rng, digits, 9)}",
            f"PO {rng.randrange(2019, 2026)}/{rand_text(rng, digits, 5)}",
        )
    )


def invoice_id(fake: Faker, rng: Random) -> str:
    year = rng.randrange(2019, 2026)
    return rng.choice((f"INV-{year}-{rand_text(rng, string.digits, 6)}", f"{year}-{rand_text(rng, string.digits, 5)}"))


def date_text(fake: Faker, rng: Random) -> str:
    pattern = rng.choice(("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%B %d, %Y", "%d %b %Y", "%Y/%m/%d"))
    return fake.date_between_dates(_FIRST_DAY, _LAST_DAY).strftime(pattern)


def timestamp(fake: Faker, rng: Random) -> str:
    moment = fake.date_time_between_dates(_FIRST_MOMENT, _LAST_MOMENT, tzinfo=UTC)
    epoch = int(moment.timestamp())
    return rng.choice(
        (
            moment.replace(tzinfo=None).isoformat() + "Z",
            moment.strftime("%Y-%m-%d %H:%M:%S,") + rand_text(rng, string.digits, 3),
            str(epoch),
            str(epoch * 1000 + rng.randrange(1000)),
            moment.strftime("%H:%M:%S.") + rand_text(rng, string.digits, 3),
        )
    )


def version(fake: Faker, rng: Random) -> str:
    a, b, c, d = rng.randrange(0, 20), rng.randrange(0, 40), rng.randrange(0, 200), rng.randrange(0, 250)
    return rng.choice(
        (
            f"v{a}.{b}.{c}",
            f"{a}.{b}.{c}-beta.{d % 9}",
            f"Python 3.{rng.randrange(8, 14)}.{rng.randrange(0, 12)}",
            f"version {a}.{b}.{c}.{d}",
            f"build {a}.{b}.{c}.{d}",
            f"v{a}.{b}.{c}.{d}",
            f"10.0.{rng.randrange(17000, 26000)}.{rng.randrange(1, 5000)}",
        )
    )


def tracking_number(fake: Faker, rng: Random) -> str:
    digits = string.digits
    return rng.choice(
        (
            "1Z" + rand_text(rng, string.ascii_uppercase + digits, 16),
            " ".join(rand_text(rng, digits, 4) for _ in range(3)),
            "9400 " + " ".join(rand_text(rng, digits, 4) for _ in range(4)) + " " + rand_text(rng, digits, 2),
            rand_text(rng, digits, 22),
            f"JJD{rand_text(rng, digits, 18)}",
        )
    )


def isbn(fake: Faker, rng: Random) -> str:
    return str(fake.isbn13()) if rng.random() < 0.6 else str(fake.isbn10())


def bad_card(fake: Faker, rng: Random) -> str:
    """A real issuer prefix and card grouping, but the Luhn check digit is wrong."""
    digits = fake.credit_card_number(rng.choice(("visa16", "mastercard", "amex", "discover")))
    wrong = (int(digits[-1]) + rng.randrange(1, 10)) % 10
    digits = digits[:-1] + str(wrong)
    return rng.choice((digits, group_digits(digits, " "), group_digits(digits, "-")))


def bad_iban(fake: Faker, rng: Random) -> str:
    """A generated IBAN with one BBAN digit changed: right country and length, mod-97 fails."""
    compact = fake.iban()
    positions = [i for i in range(4, len(compact)) if compact[i].isdigit()]
    pos = rng.choice(positions)
    compact = compact[:pos] + str((int(compact[pos]) + rng.randrange(1, 10)) % 10) + compact[pos + 1 :]
    return compact if rng.random() < 0.5 else " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def bad_ssn(fake: Faker, rng: Random) -> str:
    area, group, serial = (
        f"{rng.randrange(1, 900):03d}",
        f"{rng.randrange(1, 100):02d}",
        f"{rng.randrange(1, 10000):04d}",
    )
    broken = rng.randrange(5)
    if broken == 0:
        area = "000"
    elif broken == 1:
        area = "666"
    elif broken == 2:
        area = f"9{rng.randrange(0, 100):02d}"
    elif broken == 3:
        group = "00"
    else:
        serial = "0000"
    return f"{area}-{group}-{serial}"


def bad_ip(fake: Faker, rng: Random) -> str:
    octets = [str(rng.randrange(0, 256)) for _ in range(4)]
    octets[rng.randrange(4)] = str(rng.randrange(256, 1000))
    choice = rng.randrange(4)
    if choice == 0:
        return ".".join(octets)
    if choice == 1:
        return ".".join(octets[:3])
    if choice == 2:
        return ":".join(f"{rng.randrange(256):02X}" for _ in range(6))
    return ".".join(str(rng.randrange(0, 10)) for _ in range(rng.randrange(5, 8)))


def hash_or_id(fake: Faker, rng: Random) -> str:
    return rng.choice(
        (
            str(fake.uuid4()),
            fake.sha1(),
            fake.sha1()[:7],
            fake.sha256(),
            fake.md5(),
            "sha256:" + fake.sha256(),
            str(fake.uuid4()).replace("-", "").upper(),
        )
    )


def price(fake: Faker, rng: Random) -> str:
    amount = rng.randrange(100, 2_000_000) / 100
    return rng.choice(
        (
            f"${amount:,.2f}",
            f"€ {amount:,.2f}".replace(",", "X").replace(".", ",").replace("X", "."),
            f"{amount:,.2f} EUR".replace(",", " "),
            f"USD {int(amount):,}",
            f"£{amount:.2f}",
        )
    )


def identifier(fake: Faker, rng: Random) -> str:
    """Code identifiers and paths: long, mixed case, with digits, but not random."""
    words = [w.capitalize() for w in fake.words(rng.randrange(3, 6))]
    return rng.choice(
        (
            "".join(words) + f"V{rng.randrange(2, 9)}",
            words[0].lower() + "".join(words[1:]) + str(rng.randrange(10, 99)),
            "_".join(w.upper() for w in words) + f"_{rng.randrange(2, 64)}",
            f"reports/{rng.randrange(2019, 2026)}/Q{rng.randrange(1, 5)}_{'_'.join(words)}_v{rng.randrange(2, 9)}.xlsx",
            f"registry.example.com/{words[0].lower()}/{words[1].lower()}:v1.{rng.randrange(30)}.{rng.randrange(9)}-alpine",
            f"{words[0].lower()}-{rand_text(rng, 'abcdef0123456789', 9)}-{rand_text(rng, string.ascii_lowercase, 5)}",
        )
    )


def lookalike_handle(fake: Faker, rng: Random) -> str:
    return rng.choice(
        (
            f"@{fake.user_name()}",
            f"{fake.user_name()}@localhost",
            f"react@{rng.randrange(15, 19)}.{rng.randrange(0, 3)}.{rng.randrange(0, 9)}",
            "@channel",
            f"git@{fake.domain_word()}:{fake.user_name()}/{fake.word()}",
        )
    )


def measurement(fake: Faker, rng: Random) -> str:
    return rng.choice(
        (
            f"{fake.latitude()}, {fake.longitude()}",
            f"{rng.randrange(1, 10**9):,} rows",
            f"{rng.randrange(1, 999)}.{rng.randrange(0, 99)}%",
            f"{rng.randrange(1, 99)}:{rng.randrange(10, 59)}:{rng.randrange(10, 59)} elapsed",
        )
    )


NEGATIVES: tuple[tuple[str, NegativeFactory], ...] = (
    ("ORDER", order_number),
    ("INVOICE", invoice_id),
    ("DATE", date_text),
    ("TIMESTAMP", timestamp),
    ("VERSION", version),
    ("TRACKING", tracking_number),
    ("ISBN", isbn),
    ("BADCARD", bad_card),
    ("BADIBAN", bad_iban),
    ("BADSSN", bad_ssn),
    ("BADIP", bad_ip),
    ("HASH", hash_or_id),
    ("PRICE", price),
    ("IDENT", identifier),
    ("HANDLE", lookalike_handle),
    ("MEASURE", measurement),
)
"""Slot name in templates → generator."""
