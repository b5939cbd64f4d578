"""Deterministic PII evaluation set: realistic texts with gold character spans and hard negatives.

`generate_pii(n, seed)` fills sentence templates (support tickets, e-mails, logs, chat, config and code)
with Faker values from several locales. Slots named after an entity (`{EMAIL}`) become gold spans; the
other slots (`{BADCARD}`, `{ORDER}`, …, see `evalnegatives`) are near misses that must not be reported,
and `{NAME}`/`{ADDRESS}`/`{COMPANY}` add realistic unscored context. The same (n, seed) always gives the
same texts, so measured numbers are reproducible.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from random import Random

from faker import Faker

from margin.guard import evalvalues as values
from margin.guard.evalnegatives import NEGATIVES
from margin.guard.spans import CREDIT_CARD, EMAIL, IBAN, IP_ADDRESS, PHONE, SECRET, US_SSN

LOCALES: tuple[tuple[str, str], ...] = (
    ("en_US", "US"),
    ("en_GB", "GB"),
    ("de_DE", "DE"),
    ("fr_FR", "FR"),
    ("nl_NL", "NL"),
    ("es_ES", "ES"),
    ("it_IT", "IT"),
)
"""Faker locale → phone region used for that locale's numbers."""

_TEMPLATES: tuple[str, ...] = (
    # support tickets
    "Ticket {TRACKING}: customer {NAME} ({EMAIL}) reports card {CREDIT_CARD} was charged twice for order {ORDER} "
    "on {DATE}.",
    "Hi, I'm {NAME}. Please refund invoice {INVOICE} ({PRICE}) to my account {IBAN}. You can call me on {PHONE}.",
    "My new bank details: IBAN {IBAN}, account holder {NAME}, {ADDRESS}. The old IBAN {BADIBAN} was closed.",
    "For verification my SSN is {US_SSN} and my date of birth is {DATE}.",
    "Customer says the card number on file ({BADCARD}) has a typo; the correct one is {CREDIT_CARD}.",
    "Please update my phone to {PHONE}; the old number {PHONE} no longer works. Ref {ORDER}.",
    "Tracking {TRACKING} shows delivered at {TIMESTAMP}, but the book (ISBN {ISBN}) is missing. Contact: {EMAIL}",
    "Reach me at {PHONE} or {PHONE}, whichever. Not {ORDER}, that's my order number.",
    "Employee record: {NAME}, SSN {US_SSN}, phone {PHONE}, started {DATE}, badge {ORDER}.",
    "Form rejected: SSN {BADSSN} is not valid. Employee id {ORDER}, submitted {TIMESTAMP}.",
    "Pay with {CREDIT_CARD} or wire to {IBAN}. Order {ORDER}, total {PRICE}.",
    "Wire {PRICE} to {COMPANY}, {IBAN}, reference {INVOICE}, before {DATE}.",
    # e-mails
    "From: {NAME} <{EMAIL}>\nTo: {EMAIL}\nSubject: Invoice {INVOICE}\n\nDear {NAME}, please transfer {PRICE} to "
    "{IBAN} by {DATE}.\nRegards,\n{NAME}\nTel. {PHONE}",
    "Hello team, the vendor moved to {ADDRESS}. Their phone is {PHONE} and invoices go to {EMAIL} from now on.",
    "Hi {NAME}, my social security number is {US_SSN}; the form also asked for {BADSSN}, which the portal rejected.",
    # logs
    "{TIMESTAMP} INFO request from {IP_ADDRESS} user={EMAIL} path=/api/v1/orders/{ORDER} took 132ms",
    "{TIMESTAMP} WARN auth failed for {IP_ADDRESS} (client {VERSION}), token={SECRET}",
    "{TIMESTAMP} ERROR upstream {IP_ADDRESS} timed out; retry id {HASH}; build {VERSION}",
    "sshd[{NUM}]: Accepted publickey for deploy from {IP_ADDRESS} port {NUM} ssh2: RSA SHA256:{FINGERPRINT}",
    "client [{IP_ADDRESS}] GET /health 200 at {TIMESTAMP}; upstream {BADIP} rejected",
    "{TIMESTAMP} DEBUG cache miss key={HASH} node={IP_ADDRESS} rows={MEASURE}",
    # config and code
    "DB_PASSWORD={PASSWORD}\nDB_HOST={IP_ADDRESS}\nRELEASE={VERSION}\nCOMMIT={HASH}",
    "export OPENAI_API_KEY={SECRET}\nexport APP_VERSION={VERSION}",
    'client = Client(api_key="{SECRET}", host="{IP_ADDRESS}", port=8080)  # see {IDENT}',
    "Authorization: Bearer {SECRET}\nX-Request-Id: {HASH}",
    "Here is the deploy key, keep it safe:\n{SECRET}\nIt expires {DATE}.",
    # chat
    "hey can u send the slides to {EMAIL}? my cell is {PHONE} btw",
    "here's my key {SECRET} pls don't share lol, build {VERSION} broke on {DATE}",
    "The server at {IP_ADDRESS} rejected {BADIP} as invalid, see {IDENT} and ping {HANDLE}.",
    # negatives only
    "Order {ORDER} placed {DATE} for {PRICE}; shipped via {TRACKING}, ETA {TIMESTAMP}.",
    "Release {VERSION} ({HASH}) fixes {IDENT}; docs in ISBN {ISBN}.",
    "Card {BADCARD} declined (checksum), IBAN {BADIBAN} rejected, SSN {BADSSN} invalid, IP {BADIP} unparseable.",
    "Stats for {DATE}: {MEASURE}, {MEASURE}; invoice {INVOICE}; {HANDLE} please check {IDENT}.",
    "Meeting with {NAME} from {COMPANY} at {ADDRESS} on {DATE}, budget {PRICE}, ticket {TRACKING}.",
)

_SLOT_RE = re.compile(r"\{([A-Z_]+)\}")
_B62 = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class GoldSpan:
    entity: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    spans: tuple[GoldSpan, ...]
    locale: str


class _Filler:
    """Produces slot values for one text: entity slots give (entity, value), the rest (None, value)."""

    def __init__(self, fakers: dict[str, Faker], rng: Random, locale: str, region: str) -> None:
        self.fake = fakers[locale]
        self.us = fakers["en_US"]
        self.rng = rng
        self.region = region
        self.negatives = dict(NEGATIVES)

    def value(self, slot: str) -> tuple[str | None, str]:
        f, rng = self.fake, self.rng
        positive: dict[str, tuple[str, Callable[[], str]]] = {
            "EMAIL": (EMAIL, lambda: values.email(f, rng)),
            "PHONE": (PHONE, lambda: values.phone(f, rng, self.region)),
            "CREDIT_CARD": (CREDIT_CARD, lambda: values.credit_card(f, rng)),
            "IBAN": (IBAN, lambda: values.iban(f if self.region != "US" else self.us, rng)),
            "US_SSN": (US_SSN, lambda: values.ssn(self.us, rng)),
            "IP_ADDRESS": (IP_ADDRESS, lambda: values.ip_address(f, rng)),
            "SECRET": (SECRET, lambda: values.secret(f, rng)),
            "PASSWORD": (SECRET, lambda: values.password(f, rng)),
        }
        if slot in positive:
            entity, make = positive[slot]
            return entity, make()
        if slot in self.negatives:
            return None, self.negatives[slot](f, rng)
        return None, self._context(slot)

    def _context(self, slot: str) -> str:
        f, rng = self.fake, self.rng
        if slot == "NAME":
            return str(f.name())
        if slot == "COMPANY":
            return str(f.company())
        if slot == "ADDRESS":
            return str(f.address()).replace("\n", ", ")
        if slot == "NUM":
            return str(rng.randrange(1000, 65000))
        if slot == "FINGERPRINT":
            return values.rand_text(rng, _B62 + "+/", 43)
        raise KeyError(slot)


def render(template: str, filler: _Filler) -> tuple[str, tuple[GoldSpan, ...]]:
    """Fill every slot of `template`; return the text and the gold spans of entity slots."""
    parts: list[str] = []
    spans: list[GoldSpan] = []
    pos = 0
    length = 0
    for m in _SLOT_RE.finditer(template):
        literal = template[pos : m.start()]
        parts.append(literal)
        length += len(literal)
        entity, value = filler.value(m.group(1))
        if entity is not None:
            spans.append(GoldSpan(entity, length, length + len(value)))
        parts.append(value)
        length += len(value)
        pos = m.end()
    parts.append(template[pos:])
    return "".join(parts), tuple(spans)


def generate_pii(n: int = 1000, seed: int = 7) -> list[Sample]:
    """`n` texts from the templates, locales drawn at random; deterministic for a given seed."""
    rng = Random(seed)
    fakers: dict[str, Faker] = {}
    for i, (locale, _) in enumerate(LOCALES):
        fakers[locale] = Faker(locale)
        fakers[locale].seed_instance(seed * 1000 + i)
    samples: list[Sample] = []
    for _ in range(n):
        locale, region = rng.choice(LOCALES)
        text, spans = render(rng.choice(_TEMPLATES), _Filler(fakers, rng, locale, region))
        samples.append(Sample(text, spans, locale))
    return samples
