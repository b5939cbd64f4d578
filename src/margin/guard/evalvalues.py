"""Value generators for the guard evaluation set: true entities and hard negatives that resemble them.

Every generator takes a `faker.Faker` (already seeded, for one locale) and a `random.Random`, so a seed
fixes the whole data set. Positives are valid by construction (Luhn, mod-97, number plan, SSN rules);
negatives are near misses a naive regex would report: Luhn-failing cards with real issuer prefixes,
IBANs with a broken checksum, SSNs with reserved areas, dotted quads out of range, hashes, ids, dates.
"""

from __future__ import annotations

import base64
import json
import string
from random import Random
from types import MappingProxyType

import phonenumbers
from faker import Faker

_B62 = string.ascii_letters + string.digits
_URLSAFE = _B62 + "_-"
_UPPER_DIGITS = string.ascii_uppercase + string.digits
_CARD_TYPES = (
    "visa16",
    "visa16",
    "visa13",
    "visa19",
    "mastercard",
    "mastercard",
    "amex",
    "discover",
    "jcb16",
    "diners",
)
_GROUPS: MappingProxyType[int, tuple[int, ...]] = MappingProxyType(
    {13: (4, 4, 5), 14: (4, 6, 4), 15: (4, 6, 5), 16: (4, 4, 4, 4), 19: (4, 4, 4, 4, 3)}
)
_PHONE_FORMATS = ("intl", "intl", "national", "national", "e164", "00")


def rand_text(rng: Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def group_digits(digits: str, sep: str) -> str:
    sizes = _GROUPS.get(len(digits), (4,) * (len(digits) // 4 + 1))
    parts, pos = [], 0
    for size in sizes:
        parts.append(digits[pos : pos + size])
        pos += size
    return sep.join(p for p in parts if p)


# ---- positives -------------------------------------------------------------------------------------------


def email(fake: Faker, rng: Random) -> str:
    choice = rng.randrange(5)
    if choice == 0:
        return fake.free_email()
    if choice == 1:
        return fake.company_email()
    if choice == 2:
        return f"{fake.user_name()}+{rng.choice(('billing', 'news', 'test', '2024'))}@{fake.domain_name()}"
    if choice == 3:
        return f"{fake.first_name()}.{fake.last_name()}@{fake.domain_word()}.{fake.tld()}".lower().replace(" ", "")
    return fake.email().upper() if rng.random() < 0.3 else fake.email()


def _random_valid_number(rng: Random, region: str) -> phonenumbers.PhoneNumber:
    kind = rng.choice((phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE))
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None:
        raise ValueError(f"libphonenumber has no example number for region {region!r}")
    nsn = str(example.national_number)
    for _ in range(200):
        digits = nsn[:2] + rand_text(rng, string.digits, len(nsn) - 2)
        number = phonenumbers.PhoneNumber(country_code=example.country_code, national_number=int(digits))
        if phonenumbers.is_valid_number(number):
            return number
    return example


def phone(fake: Faker, rng: Random, region: str) -> str:
    """A valid number of `region`: Faker's locale formats (when valid) or libphonenumber's formats."""
    if rng.random() < 0.35:
        for _ in range(30):
            raw = fake.phone_number().split("x")[0].strip()
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(raw, region)):
                    return raw
            except phonenumbers.NumberParseException:
                continue
    number = _random_valid_number(rng, region)
    style = rng.choice(_PHONE_FORMATS)
    intl = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    if style == "intl":
        return intl
    if style == "e164":
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if style == "00":
        return "00" + intl[1:]
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    if region == "US" and rng.random() < 0.5:
        digits = str(number.national_number)
        return rng.choice(("-", ".")).join((digits[:3], digits[3:6], digits[6:]))
    return national


def credit_card(fake: Faker, rng: Random) -> str:
    digits = fake.credit_card_number(rng.choice(_CARD_TYPES))
    return rng.choice((digits, group_digits(digits, " "), group_digits(digits, " "), group_digits(digits, "-")))


def iban(fake: Faker, rng: Random) -> str:
    compact = fake.iban()
    return compact if rng.random() < 0.4 else " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ssn(fake_us: Faker, rng: Random) -> str:
    """AAA-GG-SSSS from an en_US Faker (which never emits reserved areas); some written with spaces."""
    value: str = fake_us.ssn()
    return value.replace("-", " ") if rng.random() < 0.15 else value


def ip_address(fake: Faker, rng: Random) -> str:
    choice = rng.randrange(6)
    if choice < 3:
        return fake.ipv4_public()
    if choice == 3:
        return fake.ipv4_private()
    if choice == 4:
        return fake.ipv6()
    return f"2001:db8:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"


def _jwt(fake: Faker, rng: Random) -> str:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"sub": str(rng.randrange(10**6)), "name": fake.name(), "iat": rng.randrange(1_600_000_000, 1_750_000_000)}
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims)}.{rand_text(rng, _URLSAFE, 43)}"


def _pem(rng: Random) -> str:
    kind = rng.choice(("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"))
    body = "\n".join(rand_text(rng, _B62 + "+/", 64) for _ in range(rng.randrange(2, 5)))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


def secret(fake: Faker, rng: Random) -> str:
    """One credential of a common shape: vendor-prefixed keys, JWTs, PEM keys, or a bare random token."""
    shapes = (
        lambda: "sk-proj-" + rand_text(rng, _URLSAFE, rng.randrange(48, 120)),
        lambda: "sk-" + rand_text(rng, _B62, 48),
        lambda: "sk-ant-api03-" + rand_text(rng, _URLSAFE, 93) + "AA",
        lambda: "AKIA" + rand_text(rng, _UPPER_DIGITS, 16),
        lambda: "ghp_" + rand_text(rng, _B62, 36),
        lambda: "github_pat_" + rand_text(rng, _B62, 22) + "_" + rand_text(rng, _B62, 59),
        lambda: (
            f"xoxb-{rand_text(rng, string.digits, 12)}-{rand_text(rng, string.digits, 13)}-{rand_text(rng, _B62, 24)}"
        ),
        lambda: "AIza" + rand_text(rng, _URLSAFE, 35),
        lambda: rng.choice(("sk_live_", "rk_live_", "sk_test_")) + rand_text(rng, _B62, 24),
        lambda: "hf_" + rand_text(rng, _B62, 34),
        lambda: _jwt(fake, rng),
        lambda: _pem(rng),
        lambda: rand_text(rng, _B62, rng.randrange(24, 48)),
        lambda: rand_text(rng, _B62 + "+/", 40),
    )
    return rng.choice(shapes)()


def password(fake: Faker, rng: Random) -> str:
    return fake.password(length=rng.randrange(10, 20), special_chars=rng.random() < 0.5)
