"""Tables. Money is integer nano-USD (see economics.money). Energy and carbon are written as the meter's floats
(`energy_j`, `co2e_g`) and, at ingest, as integers (`energy_uj`, `co2e_ng`) which every sum reads."""

from __future__ import annotations

import sqlalchemy as sa

from margin.ledger.measures import HOURLY_DIMS, LEVERS, MEASURES, latency_bin

metadata = sa.MetaData()

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, server_default="request"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("team", sa.String(128)),
    sa.Column("user", sa.String(256)),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("model", sa.String(128)),
    sa.Column("requested_model", sa.String(128)),
    sa.Column("backend", sa.String(64)),
    sa.Column("region", sa.String(64)),
    sa.Column("jurisdiction", sa.String(32)),
    sa.Column("org", sa.String(128)),
    sa.Column("guard", sa.JSON),
    sa.Column("prompt_text", sa.Text),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("output_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("usage_source", sa.String(16)),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("e2e_ms", sa.Float, nullable=False),
    sa.Column("overhead_ms", sa.Float),
    sa.Column("backend_ms", sa.Float),
    sa.Column("queue_ms", sa.Float),
    sa.Column("cost_nanousd", sa.BigInteger),
    sa.Column("cost_status", sa.String(16), nullable=False),
    sa.Column("cost_method", sa.String(16)),
    sa.Column("price_version", sa.String(64)),
    sa.Column("energy_j", sa.Float),
    sa.Column("energy_method", sa.String(16)),
    sa.Column("pue", sa.Float),
    sa.Column("co2e_g", sa.Float),
    sa.Column("grid_g_per_kwh", sa.Float),
    sa.Column("grid_source", sa.String(64)),
    sa.Column("config_hash", sa.String(16), nullable=False),
    sa.Column("cache", sa.String(16)),
    sa.Column("saved_nanousd", sa.BigInteger),
    sa.Column("router_score", sa.Float),
    sa.Column("counterfactual_nanousd", sa.BigInteger),
    sa.Column("busy_ms", sa.Float),  # the backend busy time billed to this request (self-hosted TCO)
    sa.Column("energy_uj", sa.BigInteger),  # round(energy_j × 10⁶): microjoules, filled at ingest
    sa.Column("co2e_ng", sa.BigInteger),  # round(co2e_g × 10⁹): nanograms, filled at ingest
    sa.Column("batch_id", sa.String(40)),  # a batch line's job (also in tags); NULL for live traffic
    sa.Column("discount_nanousd", sa.BigInteger),  # batch discount taken off the metered cost (cost is after it)
    sa.Column("route_pref", sa.String(8)),  # carbon | cost: a lowest-carbon / lowest-cost route chose the backend
    sa.Column("route_default", sa.String(128)),  # the route's default model (the counterfactual)
    sa.Column("default_cost_nanousd", sa.BigInteger),  # what the default would have cost for the same tokens
    sa.Column("default_co2e_g", sa.Float),  # what the default would have emitted
    sa.Column("service_tier", sa.String(16)),  # the processing tier it was charged at (flex, priority…; 0018)
    sa.UniqueConstraint("request_id", "kind", name="uq_ledger_request_kind"),
    sa.Index("ix_ledger_created_at", "created_at"),
    sa.Index("ix_ledger_team_created", "team", "created_at"),
    sa.Index("ix_ledger_model_created", "model", "created_at"),
    # a key's rows, covering its exact percentiles' walk (margin.ledger.read.latency; 0017)
    sa.Index("ix_ledger_key_latency", "key_id", "created_at", "kind", "e2e_ms", "ttft_ms"),
    # an exact latency percentile: one bin's values in a window, read from the index (margin.ledger.read.latency);
    # keyed by bin, then time, so appended rows go to the end of each bin's run, not to random pages
    sa.Index("ix_ledger_e2e_bin", sa.text(f"({latency_bin('e2e_ms')})"), "created_at", "e2e_ms", "kind"),
    sa.Index("ix_ledger_ttft_bin", sa.text(f"({latency_bin('ttft_ms')})"), "created_at", "ttft_ms", "kind"),
    sa.Index("ix_ledger_batch", "batch_id"),
)
# one end user's rows in a window: a per-user budget counter rebuilt from the ledger (margin.ledger.read.budget,
# `user=*` scopes); partial, so rows without a `user` (most traffic) cost the ingest nothing (0024)
sa.Index(
    "ix_ledger_user_created",
    ledger.c.user,
    ledger.c.created_at,
    sqlite_where=ledger.c.user.is_not(None),
    postgresql_where=ledger.c.user.is_not(None),
)


# a task's identity (measures.task): 't:', org and team as <length>:<value> (≤ 132 each: names are ≤ 128), two
# '/' and a task_id tag (≤ 128, margin.pipeline.steps.auth): 396 at most
TASK_LENGTH = 512


def _sums() -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger, nullable=False) for name in MEASURES]


# The rollups (margin.ledger.rollup keeps them, per ingested batch). NULL dimensions are stored as ''.
ledger_hourly = sa.Table(  # per UTC hour × kind × team × org × model × backend × region
    "ledger_hourly",
    metadata,
    sa.Column("hour", sa.String(19), primary_key=True),  # 2026-11-02T13:00:00
    *(sa.Column(name, sa.String(256), primary_key=True) for name in HOURLY_DIMS),
    *_sums(),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in LEVERS),  # the cost levers' sums (0009)
    sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
)

ledger_daily = sa.Table(  # per dimension (key, endpoint, status, error, each rolled-up tag key) × UTC day × kind × team
    "ledger_daily",
    metadata,
    sa.Column("dim", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # 2026-11-02
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("team", sa.String(256), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    *_sums(),
)

ledger_latency = sa.Table(  # latency histograms per dimension × metric × UTC day (× team for '' and model; else '*')
    "ledger_latency",
    metadata,
    sa.Column("dim", sa.String(64), primary_key=True),
    sa.Column("metric", sa.String(8), primary_key=True),  # e2e | ttft: a read scans one metric's rows only
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("team", sa.String(256), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("bin", sa.Integer, primary_key=True),  # margin.ledger.measures.latency_bin
    sa.Column("n", sa.BigInteger, nullable=False),
)

ledger_attach = sa.Table(  # which customers used which feature on which UTC days (attach rate: distinct counts)
    "ledger_attach",  # per team, and across every team (team '*', measures.EVERY_TEAM)
    metadata,
    sa.Column("month", sa.String(7), primary_key=True),  # 2026-11
    sa.Column("team", sa.String(256), primary_key=True),
    sa.Column("feature", sa.String(256), primary_key=True),
    sa.Column("customer", sa.String(256), primary_key=True),
    sa.Column("days", sa.BigInteger, nullable=False),  # bit d-1 set: the pair was seen on day d of the month (0009)
)

ledger_tasks = sa.Table(  # one row per task (task_id tag, else the request); its anchor is its earliest request
    "ledger_tasks",
    metadata,
    sa.Column("task", sa.String(TASK_LENGTH), primary_key=True),  # measures.task: t:<org>/<team>/<task_id> | r:<id>
    sa.Column("anchor_at", sa.DateTime(timezone=True), nullable=False),
    *(sa.Column(name, sa.String(256)) for name in ("team", "key_id", "model", "backend", "region")),
    *(sa.Column(name, sa.String(256)) for name in ("feature", "customer")),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
    sa.Column("unpriced", sa.BigInteger, nullable=False),
    sa.Index("ix_ledger_tasks_anchor", "anchor_at"),
)

ledger_task_daily = sa.Table(  # tasks per anchor day × team × dimension (the anchor's value), kept with ledger_tasks
    "ledger_task_daily",
    metadata,
    sa.Column("dim", sa.String(64), primary_key=True),  # '' | feature | customer | model | backend | region | key
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("team", sa.String(256), primary_key=True),
    sa.Column("value", sa.String(256), primary_key=True),
    sa.Column("tasks", sa.BigInteger, nullable=False),
    sa.Column("cost_nanousd", sa.BigInteger, nullable=False),
    sa.Column("unpriced", sa.BigInteger, nullable=False),
)

ledger_charges = sa.Table(  # priced requests per UTC day × key × team × model × backend × region × service tier
    "ledger_charges",  # (the FOCUS charges)
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    *(sa.Column(name, sa.String(256), primary_key=True) for name in ("key", "team", "model", "backend", "region")),
    sa.Column("service_tier", sa.String(16), primary_key=True),  # the ledger's service_tier, '' for none (0019)
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in
      ("requests", "input_tokens", "output_tokens", "cost_nanousd", "energy_uj", "co2e_ng", "energy_n", "co2e_n")),
)  # fmt: skip

ledger_rollup_keys = sa.Table(  # the tag keys ledger_daily and ledger_latency hold (set by a rebuild)
    "ledger_rollup_keys",
    metadata,
    sa.Column("tag_key", sa.String(64), primary_key=True),
)

feedback = sa.Table(  # outcomes of requests (POST /v1/margin/feedback); the latest post for a request wins
    "feedback",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.String(32)),  # who posted it
    sa.Column("success", sa.Boolean),
    sa.Column("score", sa.Float),
    sa.Column("value_nanousd", sa.BigInteger),  # business value of the outcome, when the caller knows it
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revisions", sa.Integer, nullable=False, server_default="1"),
    # the task of its request (measures.task: t:<org>/<team>/<task_id> | r:<request_id>; NULL for a row that is
    # not traffic), set when it is posted, so grading a window's tasks reads no ledger rows (0010; its tenant 0015)
    sa.Column("task", sa.String(TASK_LENGTH)),
    sa.Index("ix_feedback_created", "created_at"),  # tasks read the feedback posted since a window began
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("team", sa.String(128)),
    sa.Column("org", sa.String(128)),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("policy", sa.JSON),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("sessions_not_before", sa.BigInteger),  # Unix ms: dashboard sessions issued before are ended (0016)
    sa.Column("expires_at", sa.DateTime(timezone=True)),  # refused from then on; NULL: never expires (0022)
    sa.Column("previous_hash", sa.String(64)),  # the secret before the last rotation (0023) ...
    sa.Column("previous_valid_until", sa.DateTime(timezone=True)),  # ... accepted until then (its grace)
    sa.Column("rotated_at", sa.DateTime(timezone=True)),  # the last rotation; NULL: never rotated
    sa.Index("ix_api_keys_previous_hash", "previous_hash", unique=True),
)

cache_entries = sa.Table(  # the exact cache's single-node store (Redis takes over when replicas run)
    "cache_entries",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_cache_entries_expires", "expires_at"),
)

gov_rules = sa.Table(
    "gov_rules",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),  # budget | limit | flag
    sa.Column("name", sa.String(160), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

audit_log = sa.Table(  # every administrative change, append-only, hash-chained (margin.ledger.audit)
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(160), nullable=False),  # key:<id>, cli:<os user>, signal:SIGHUP, unauthenticated
    sa.Column("actor_name", sa.String(128)),  # the admin key's name
    sa.Column("source", sa.String(16), nullable=False),  # http | cli | reload
    sa.Column("address", sa.String(64)),  # the HTTP client's address
    sa.Column("action", sa.String(32), nullable=False),  # key.create, budget.put, config.reload, ...
    sa.Column("target", sa.String(256)),
    sa.Column("request_id", sa.String(64)),
    sa.Column("outcome", sa.String(8), nullable=False),  # ok | denied | failed
    sa.Column("before", sa.JSON),
    sa.Column("after", sa.JSON),
    sa.Column("hash", sa.String(64), nullable=False),  # sha256(previous row's hash + canonical JSON of this row)
    sa.Index("ix_audit_log_at", "at"),
)

audit_anchor = sa.Table(  # one row once audit.retention_days pruned: the hash the oldest kept row chains from
    "audit_anchor",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1
    sa.Column("last_pruned_id", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=False),
)

stored_responses = sa.Table(  # Responses API answers kept for `previous_response_id` and GET (margin.ledger.stored)
    "stored_responses",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # resp_<request id>
    sa.Column("key_id", sa.String(64)),  # the owner: its key (and the key's org, which shares it)
    sa.Column("org", sa.String(128)),
    sa.Column("previous_id", sa.String(64)),  # the response it continued (`previous_response_id`)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),  # of `input` and `response` as JSON
    sa.Column("input", sa.JSON, nullable=False),  # this turn's input items, as received (ids added)
    sa.Column("response", sa.JSON, nullable=False),  # the Response object as it was answered
    sa.Index("ix_stored_responses_expires_at", "expires_at"),
)

ledger_dead_letter = sa.Table(  # ledger rows the database refused (margin.ledger.deadletter), with its error
    "ledger_dead_letter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("row", sa.Text, nullable=False),  # the refused row as JSON (NUL escaped)
    sa.Column("salvaged", sa.Boolean, nullable=False),  # a coerced copy of the row reached the ledger
    sa.Index("ix_ledger_dead_letter_request", "request_id"),
)

outbox_offsets = sa.Table(  # how far the ingester got in each outbox file, committed with each batch it moved
    "outbox_offsets",
    metadata,
    sa.Column("segment", sa.String(255), primary_key=True),  # the file's name (margin.ledger.segments)
    sa.Column("byte_offset", sa.BigInteger, nullable=False),  # bytes of whole rows already in the ledger
    sa.Column("rows", sa.BigInteger, nullable=False),  # rows read from the file so far
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# The Batch API (margin.batches). Files keep their bytes in the database: one durable store, written in the
# same transaction as the job state it belongs to (a job's output file and its `completed` status land
# together or not at all), shared by replicas without a shared file system, backed up with the ledger.
batch_files = sa.Table(
    "batch_files",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # file-<14 hex: created_at in µs><18 hex>
    sa.Column("key_id", sa.String(32)),  # the owner (NULL: open mode)
    sa.Column("org", sa.String(128)),
    sa.Column("purpose", sa.String(16), nullable=False),  # batch | batch_output
    sa.Column("filename", sa.String(256), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("lines", sa.Integer, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),  # NULL: kept until deleted (margin.batches.expiry)
    sa.Index("ix_batch_files_key_created", "key_id", "created_at"),
    sa.Index("ix_batch_files_expires_at", "expires_at"),
)

# The lines of a job's input refused at validation, one row each ({line, custom_id, code, message, param}):
# a 50 MB file can hold 50,000 of them, too many for one value read with every look at the job (`batches.errors`
# keeps the first 100, for the job object); the error file reads them all, a page at a time.
batch_errors = sa.Table(
    "batch_errors",
    metadata,
    sa.Column("batch_id", sa.String(40), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("error", sa.JSON, nullable=False),
)

# A job's output and error files, in parts of up to 1 MiB (their `content` is then empty): written as the
# job's lines are read, a page at a time, and served the same way, so neither holds a whole file in memory
# (they are as large as the answers: a 447 KB input made 631 MiB of output). Uploads keep their bytes in
# `content` (bounded by batches.max_file_bytes).
batch_file_parts = sa.Table(
    "batch_file_parts",
    metadata,
    sa.Column("file_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # batch_<14 hex: created_at in µs><18 hex>
    sa.Column("key_id", sa.String(32)),  # the key that created it: every line runs as that key
    sa.Column("org", sa.String(128)),
    sa.Column("team", sa.String(128)),
    sa.Column("input_file_id", sa.String(40), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("completion_window", sa.String(8), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # OpenAI's statuses
    sa.Column("model", sa.String(128)),  # the one model of the job's lines (known after validation)
    sa.Column("tags", sa.JSON, nullable=False),  # x-margin-tags of the create request, sent with every line
    sa.Column("meta", sa.JSON),  # the caller's `metadata`
    sa.Column("errors", sa.JSON),  # lines refused by validation: [{line, custom_id, code, message, param}]
    sa.Column("plan", sa.JSON),  # the schedule: windows, objective, estimated saving
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_file_id", sa.String(40)),
    sa.Column("error_file_id", sa.String(40)),
    *(
        sa.Column(f"{moment}_at", sa.DateTime(timezone=True))
        for moment in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
    ),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("lease_owner", sa.String(40)),  # the worker running it (one at a time, across replicas)
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    # what the job keeps besides its files, counted against batches.max_stored_bytes_per_key (margin.batches.quota)
    sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"),
    # {input_tokens, cached_tokens, output_tokens} of its ledger rows, summed when it ended (0020; NULL before)
    sa.Column("usage", sa.JSON),
    sa.Column("output_expires_s", sa.Integer),  # its output and error files' `output_expires_after` (NULL: kept)
    # {status: lines} of its lines when it ended, whose rows are then deleted (0029; NULL while it runs)
    sa.Column("line_counts", sa.JSON),
    sa.Index("ix_batches_key_created", "key_id", "created_at"),
    sa.Index("ix_batches_status", "status"),
    sa.Index("ix_batches_key_status", "key_id", "status"),  # a key's unfinished jobs
)

batch_lines = sa.Table(
    "batch_lines",
    metadata,
    sa.Column("batch_id", sa.String(40), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),  # line number in the input file (from 1)
    sa.Column("custom_id", sa.String(256), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # the request body, JSON
    sa.Column("status", sa.String(16), nullable=False),  # pending | running | done | failed | expired | cancelled
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),  # packed: margin.batches.progress.DEFERRAL
    sa.Column("not_before", sa.DateTime(timezone=True)),  # retry after a 429/5xx
    sa.Column("request_id", sa.String(64)),  # the ledger row of the last attempt
    sa.Column("status_code", sa.Integer),
    sa.Column("response", sa.Text),  # the answer's body, JSON
    sa.Column("error", sa.JSON),  # {code, message} of a line that ended without an answer
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("batch_id", "custom_id", name="uq_batch_lines_custom_id"),
    sa.Index("ix_batch_lines_status", "batch_id", "status"),
)
