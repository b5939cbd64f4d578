"""`margin export focus`: the ledger as FOCUS 1.2 cost and usage rows (CSV or Parquet).

One row per charge = UTC day × API key × team × model × backend × region × service tier (the ledger_charges
rollup), or with `--tags feature,customer` also × those tags (read from rows: with tags that vary per request,
about one charge per request; task_id is never used, it would always make a row per request). Columns: the 21
mandatory FOCUS 1.2 columns of DESIGN §4, a few conditional ones we can fill honestly (ChargeFrequency,
ConsumedQuantity/Unit, RegionId/Name, ServiceSubcategory, SubAccountId/Name), Tags (JSON object) and x_
columns for requests, tokens, energy (J), carbon (gCO2e), the model, the key and the service tier.

The service tier (`x_ServiceTier`: the ledger's `service_tier`, `flex`, `priority`…; null where none was
recorded, i.e. standard processing or a cache hit) splits a model's day into a charge per tier, each at its own
price, so what flex saved and priority cost can be allocated. It is an x_ column, as the model is, rather than
a SkuId/SkuPriceId: FOCUS 1.2's SkuPriceId MUST reference a SKU price in a provider-supplied price list and
have one parent SkuId, and a charge here blends two unit prices (input and output tokens) that margin
publishes in no price list. ChargeDescription names the tier too ("… to gpt-5-mini at flex via openai").

ProviderName and InvoiceIssuerName are the backend's provider (`self-hosted (<backend>)` for a backend with
hardware, else its `provider`, else its name). A charge with no backend (cache hits: margin answered from its
own cache; requests refused before routing) has `margin` in both: FOCUS's provider is the entity that made the
service available, and for those that is the gateway, not a backend (they were "unknown"); its invoice issuer is
the entity responsible for invoicing the charge, and no outside party invoices an answer margin gave itself.
PublisherName stays the model's `owned_by`: the publisher produced the model whose answer was cached.

InvoiceId is null: margin issues no invoices, and FOCUS 1.2 says InvoiceId MUST be null when the charge is
not associated with an invoice or a pre-generated provisional one (InvoiceId-C-004-C). focus-validator 2.2.1
checks both halves of that either-or without their conditions, so it reports the other half
(InvoiceId-C-005-C, "MUST NOT be null when invoiced") as failed while the rule, InvoiceId-C-003-C, passes;
a provisional invoice id fails the other half and leaving the column out fails 7 rules, so no export passes
every rule of 2.2.1, the latest release (tests/report/test_focus_validator.py).

Costs: BilledCost = EffectiveCost = ContractedCost = the ledger's cost, what was charged (no commitments exist
between margin and itself). ListCost is the cost at list price: the same, but for batch lines, charged at the
batch discount, whose ListCost is their cost before it (the ledger's cost + discount_nanousd; before, the
discounted cost). Requests at an unknown price cannot be written (FOCUS costs are never null and margin never
turns an unknown price into 0): they are left out and counted in the result.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from margin.config import Settings
from margin.economics.money import from_nanousd
from margin.errors import InvalidRequest
from margin.ledger.measures import MICRO, NANO
from margin.ledger.read import Window
from margin.ledger.read.charges import CHARGE_GRAIN, charges, stream_charges, unpriced
from margin.report.cells import spreadsheet_text

GATEWAY = "margin"  # ProviderName and InvoiceIssuerName of what margin served itself (no backend called)
MANDATORY = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity",
    "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName",
)  # fmt: skip
CONDITIONAL = (
    "ChargeFrequency", "ConsumedQuantity", "ConsumedUnit", "InvoiceId", "RegionId", "RegionName", "ServiceSubcategory",
    "SubAccountId", "SubAccountName", "Tags",
)  # fmt: skip
EXTENSIONS = (
    "x_Requests", "x_InputTokens", "x_OutputTokens", "x_EnergyJ", "x_CO2eG", "x_ModelName", "x_KeyId", "x_ServiceTier",
)  # fmt: skip
COLUMNS = MANDATORY + CONDITIONAL + EXTENSIONS
COST_COLUMNS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost")
DATE_COLUMNS = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
TAG_KEYS = ("feature", "customer")  # `--tags` a charge may also be split by (then read from rows)
ROW_GROUP = 50_000
"""Charges per Parquet row group, and so the most the Parquet writer holds: it built every row as a dict and
then every column as a list at once (a 1M-charge `--tags` month: see benchmarks/README.md, focus_memory.py)."""


@dataclass(frozen=True, slots=True)
class FocusExport:
    charges: Sequence[Any]  # margin.ledger.read.charges rows
    unpriced_requests: int  # left out: FOCUS costs cannot be null
    period_start: datetime
    period_end: datetime
    settings: Settings
    account: str
    tags: tuple[str, ...] = ()
    written: int | None = None  # `export`: the charges streamed to the file (then `charges` is empty)

    @property
    def count(self) -> int:
        return len(self.charges) if self.written is None else self.written

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row as a dict of typed values (Decimal costs, UTC datetimes); the writers stream instead."""
        period = (self.period_start, self.period_end)
        return [_row(self.settings, r, period, self.account, self.tags) for r in self.charges]


def parse_period(period: str) -> tuple[datetime, datetime]:
    """`2026-11` → [2026-11-01, 2026-12-01) in UTC."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidRequest(f"--period must look like 2026-11, not {period!r}") from exc
    try:
        end = (start + timedelta(days=32)).replace(day=1)
    except OverflowError as exc:  # 9999-12 ends in year 10000
        raise InvalidRequest(f"--period {period!r} is outside the dates this gateway reads") from exc
    return start, end


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _provider(settings: Settings, backend: str | None) -> str:
    """ProviderName and InvoiceIssuerName: the backend's provider, or `margin` where no backend was called
    (a cache hit, a request refused before routing): the gateway served it and is the one accounting for it."""
    if not backend:
        return GATEWAY
    config = settings.backends.get(backend)
    if config is None:
        return backend
    if config.hardware is not None:
        return f"self-hosted ({backend})"
    return getattr(config, "provider", None) or str(backend)


def _publisher(settings: Settings, model: str | None) -> str:
    config = settings.models.get(model or "")
    return config.owned_by if config is not None else "unknown"


def _tags(r: Any, tag_keys: tuple[str, ...]) -> dict[str, Any]:
    found = {"team": r.team, **{k: getattr(r, k) for k in tag_keys}}
    return {k: v for k, v in found.items() if v is not None}


def _description(r: Any) -> str:
    tier = f" at {r.service_tier}" if r.service_tier is not None else ""
    return f"{int(r.requests)} requests to {r.model or 'no model'}{tier} via {r.backend or 'no backend'}"


def _row(
    settings: Settings, r: Any, period: tuple[datetime, datetime], account: str, tag_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    day = datetime.fromisoformat(str(r.day)).replace(tzinfo=UTC)
    cost = from_nanousd(int(r.cost_nanousd or 0))
    tokens = int(r.input_tokens or 0) + int(r.output_tokens or 0)
    provider = _provider(settings, r.backend)
    tags = _tags(r, tag_keys)
    row: dict[str, Any] = dict.fromkeys(COST_COLUMNS, cost)
    row["ListCost"] = from_nanousd(_listed(r))
    row.update(
        BillingAccountId=account, BillingAccountName=account, BillingCurrency="USD",
        BillingPeriodStart=period[0], BillingPeriodEnd=period[1], ChargeCategory="Usage", ChargeClass=None,
        ChargeDescription=_description(r),
        ChargePeriodStart=day, ChargePeriodEnd=day + timedelta(days=1), InvoiceIssuerName=provider,
        PricingQuantity=Decimal(tokens), PricingUnit="Tokens", ProviderName=provider,
        PublisherName=_publisher(settings, r.model), ServiceCategory="AI and Machine Learning",
        ServiceName="LLM Inference", ChargeFrequency="Usage-Based", ConsumedQuantity=Decimal(tokens),
        ConsumedUnit="Tokens", InvoiceId=None, RegionId=r.region, RegionName=r.region,
        ServiceSubcategory="Generative AI",
        SubAccountId=r.team, SubAccountName=r.team, Tags=tags, x_Requests=int(r.requests),
        x_InputTokens=int(r.input_tokens or 0), x_OutputTokens=int(r.output_tokens or 0),
        x_EnergyJ=None if r.energy_uj is None else int(r.energy_uj) / MICRO,
        x_CO2eG=None if r.co2e_ng is None else int(r.co2e_ng) / NANO, x_ModelName=r.model, x_KeyId=r.key,
        x_ServiceTier=r.service_tier,
    )  # fmt: skip
    return row


def focus_rows(
    engine: sa.Engine,
    settings: Settings,
    period: str,
    account: str = "margin",
    tags: Sequence[str] = (),
    rollup: bool = True,
) -> FocusExport:
    """The month's charges: day × key × team × model × backend × region × service tier (from ledger_charges),
    split further by the tag keys in `tags` (feature, customer: then read from the ledger rows, about one
    charge per request when tags vary per request)."""
    head = _head(settings, period, account, tags)
    window = Window(head.period_start, head.period_end, rollup=rollup)
    with engine.connect() as connection:
        found = charges(connection, window, (*CHARGE_GRAIN, *head.tags))
        left_out = unpriced(connection, window)
    return replace(head, charges=found, unpriced_requests=left_out)


def _head(settings: Settings, period: str, account: str, tags: Sequence[str]) -> FocusExport:
    """An export's validated parameters, no charges yet."""
    if not account.strip():  # FOCUS: BillingAccountId and BillingAccountName MUST NOT be null (an empty CSV cell is)
        raise InvalidRequest("--account must name the billing account: FOCUS's BillingAccountId cannot be empty")
    tags = tuple(dict.fromkeys(tags))  # a key named twice splits once (it was a duplicate column: a traceback)
    unknown = set(tags) - set(TAG_KEYS)
    if unknown:
        raise InvalidRequest(f"--tags: {', '.join(sorted(unknown))} unknown; choose among {', '.join(TAG_KEYS)}")
    start, end = parse_period(period)
    return FocusExport((), 0, start, end, settings, account, tags)


def _listed(r: Any) -> int:
    """A charge's cost at list price, nano-USD: what was charged plus its batch lines' discount."""
    return int(r.cost_nanousd or 0) + int(r.discount_nanousd or 0)


def _usd(nano: int) -> str:
    """Integer nano-USD as the 9-place decimal string usd_str() prints, and the Parquet export holds: a
    negative sum (a credit row in a shared ledger) is its sign and magnitude (floor division printed -5,000
    nano-USD as -1.999995000)."""
    whole = abs(nano)
    return f"{'-' if nano < 0 else ''}{whole // 1_000_000_000}.{whole % 1_000_000_000:09d}"


def _cell(text: str) -> str:
    """A name as a CSV cell (a backend the config no longer names is its name as the ledger holds it)."""
    return str(spreadsheet_text(text))


def _csv_lines(export: FocusExport, found: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows in COLUMNS order, already as CSV text (one pass: a month of a million charges in seconds)."""
    settings, account = export.settings, spreadsheet_text(export.account)  # a script may fill it from a name
    period = (_iso(export.period_end), _iso(export.period_start))
    providers: dict[Any, str] = {}
    publishers: dict[Any, str] = {}
    days: dict[str, tuple[str, str]] = {}
    texts: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # team, region, model, key as cells (spreadsheet_text)
    for r in found:
        day = days.get(r.day)
        if day is None:
            start = datetime.fromisoformat(str(r.day)).replace(tzinfo=UTC)
            day = days[r.day] = (_iso(start + timedelta(days=1)), _iso(start))
        provider = providers.get(r.backend) or providers.setdefault(r.backend, _cell(_provider(settings, r.backend)))
        publisher = publishers.get(r.model) or publishers.setdefault(r.model, _cell(_publisher(settings, r.model)))
        cost, listed = _usd(int(r.cost_nanousd or 0)), _usd(_listed(r))
        tokens = f"{int(r.input_tokens or 0) + int(r.output_tokens or 0)}.0"
        tags = _tags(r, export.tags)
        names = (r.team, r.region, r.model, r.key, r.service_tier)
        cells = texts.get(names) or texts.setdefault(names, tuple(map(spreadsheet_text, names)))
        team, region, model, key, tier = cells
        yield (
            cost, account, account, "USD", *period, "Usage", "",
            _description(r), *day,
            cost, cost, provider, listed, tokens, "Tokens", provider, publisher, "AI and Machine Learning",
            "LLM Inference", "Usage-Based", tokens, "Tokens", "", region, region, "Generative AI", team, team,
            orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode(), int(r.requests), int(r.input_tokens or 0),
            int(r.output_tokens or 0), "" if r.energy_uj is None else int(r.energy_uj) / MICRO,
            "" if r.co2e_ng is None else int(r.co2e_ng) / NANO, model, key, tier,
        )  # fmt: skip


def write_csv(export: FocusExport, path: Path, found: Iterable[Any] | None = None) -> int:
    """`found` (default: the export's charges) as CSV lines, streamed; returns how many."""
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for line in _csv_lines(export, export.charges if found is None else found):
            writer.writerow(line)
            count += 1
    return count


def _schema() -> Any:
    import pyarrow as pa

    money, stamp = pa.decimal128(38, 9), pa.timestamp("s", tz="UTC")
    types: dict[str, Any] = dict.fromkeys(COST_COLUMNS, money) | dict.fromkeys(DATE_COLUMNS, stamp)
    types |= {"PricingQuantity": pa.decimal128(38, 0), "ConsumedQuantity": pa.decimal128(38, 0)}
    types |= {"x_Requests": pa.int64(), "x_InputTokens": pa.int64(), "x_OutputTokens": pa.int64()}
    types |= {"x_EnergyJ": pa.float64(), "x_CO2eG": pa.float64()}
    return pa.schema([(column, types.get(column, pa.string())) for column in COLUMNS])


def _table(export: FocusExport, schema: Any, group: Sequence[Any]) -> Any:
    """One row group's charges as a table of `schema`."""
    import pyarrow as pa

    period = (export.period_start, export.period_end)
    rows = [_row(export.settings, r, period, export.account, export.tags) for r in group]
    arrays = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if field.name == "Tags":
            values = [orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode() for v in values]
        if field.name in COST_COLUMNS:
            values = [v.quantize(Decimal("1e-9")) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_parquet(export: FocusExport, path: Path, found: Iterable[Any] | None = None) -> int:
    """`found` (default: the export's charges) in row groups of ROW_GROUP, streamed; returns how many."""
    import pyarrow.parquet as pq

    schema, count = _schema(), 0
    charges_ = iter(export.charges if found is None else found)
    with pq.ParquetWriter(path, schema) as writer:
        while group := list(islice(charges_, ROW_GROUP)):
            writer.write_table(_table(export, schema, group))
            count += len(group)
        if count == 0:  # an empty month: a file with the columns and no rows, as before
            writer.write_table(_table(export, schema, []))
    return count


def export(
    engine: sa.Engine, settings: Settings, period: str, out: Path, account: str = "margin", tags: Sequence[str] = ()
) -> FocusExport:
    """Write `out` (.csv or .parquet), the charges streamed from the ledger to the file (never all held where
    they are read from rows: `stream_charges`); returns what was written."""
    if out.suffix not in (".csv", ".parquet"):
        raise InvalidRequest(f"--out must end in .csv or .parquet, not {out.name!r}")
    head = _head(settings, period, account, tags)
    window = Window(head.period_start, head.period_end)
    write = write_csv if out.suffix == ".csv" else write_parquet
    with engine.connect() as connection:
        left_out = unpriced(connection, window)
        try:
            written = write(head, out, stream_charges(connection, window, (*CHARGE_GRAIN, *head.tags)))
        except OSError as exc:
            raise InvalidRequest(f"cannot write {out}: {exc.strerror}") from exc
    return replace(head, unpriced_requests=left_out, written=written)


__all__ = ["COLUMNS", "MANDATORY", "FocusExport", "export", "focus_rows", "parse_period"]
