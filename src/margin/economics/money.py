"""Decimal money helpers. Storage uses integer nano-USD (1e-9 $): a 20-token local request costs ~2 µ$,
so micro-USD would round real requests to 0, while nano-USD keeps SQL sums exact up to $9.2e9."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from margin.specs import MAX_USD

NANO = Decimal("1e9")
MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1000)
SECONDS_PER_HOUR = Decimal(3600)
JOULES_PER_KWH = 3_600_000.0


def to_nanousd(usd: Decimal) -> int:
    """`usd` in integer nano-USD. Out of range (over `MAX_USD` either way, or not finite) is a ValueError,
    raised before any arithmetic: turning `1e400000` into an int would take seconds of CPU. (`copy_abs`, not
    `abs`: `abs` rounds to the context, and `1e1000000` is past its largest exponent: decimal.Overflow.)"""
    if not usd.is_finite() or usd.copy_abs() > MAX_USD:
        raise ValueError(f"{usd} USD is out of range (at most {MAX_USD} either way)")
    return int((usd * NANO).to_integral_value(rounding=ROUND_HALF_EVEN))


def capped_nanousd(usd: Decimal) -> int:
    """`usd` in integer nano-USD, held at ±`MAX_USD`: for amounts that may be any size (a worst case, a cap
    written as 1e12 for "unlimited"), where the most the ledger holds is the most that counts."""
    return to_nanousd(max(min(usd, MAX_USD), -MAX_USD))


def from_nanousd(nano: int) -> Decimal:
    return Decimal(nano) / NANO


NANO_PLACES = Decimal(1).scaleb(-9)  # usd_str's default quantum, built once (it is on every answer's headers)


def usd_str(usd: Decimal | None, places: int = 9) -> str | None:
    """A decimal string for JSON and headers (never a float)."""
    if usd is None:
        return None
    quantum = NANO_PLACES if places == 9 else Decimal(1).scaleb(-places)
    return format(usd.quantize(quantum, rounding=ROUND_HALF_EVEN), "f")


ZERO_USD = "0.000000000"  # `usd_str(Decimal(0))`: what an answer that spent nothing says it cost


def human_usd(value: str | None) -> str:
    """A decimal string of USD for people (the terminal report, the dashboard): three significant digits for
    small amounts ($0.0000157), cents for large ones ($1234.57), `-` for none."""
    if value is None:
        return "-"
    amount = Decimal(value)
    if amount == 0:
        return "$0"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount.quantize(Decimal(1).scaleb(amount.adjusted() - 2)):f}"


def dec(value: float) -> Decimal:
    """Bring a measured quantity (seconds, kWh) into Decimal arithmetic via its shortest repr."""
    return Decimal(repr(value))
