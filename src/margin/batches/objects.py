"""The OpenAI shapes of files and batches (what the `openai` SDK parses), from the table rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from margin.batches.planning import saving_text
from margin.batches.store import utc
from margin.types import Usage

MOMENTS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def _ts(value: datetime | None) -> int | None:
    moment = utc(value)
    return None if moment is None else int(moment.timestamp())


def file_object(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": int(row.bytes),
        "created_at": _ts(row.created_at),
        "expires_at": _ts(row.expires_at),  # None: kept until deleted
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


def usage_object(used: Usage) -> dict[str, Any]:
    """OpenAI's `usage` of a batch (reasoning tokens are not told apart in the ledger: 0)."""
    return {
        "input_tokens": used.input_tokens,
        "input_tokens_details": {"cached_tokens": used.cached_tokens},
        "output_tokens": used.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": used.input_tokens + used.output_tokens,
    }


def batch_object(row: Any, used: Usage | None = None, live_counts: dict[str, int] | None = None) -> dict[str, Any]:
    errors = row.errors or []
    out: dict[str, Any] = {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _ts(row.created_at),
        "expires_at": _ts(row.expires_at),
        **{f"{moment}_at": _ts(getattr(row, f"{moment}_at")) for moment in MOMENTS},
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.meta,
        "model": row.model,
    }
    if used is not None:  # the API's objects (the CLI shows the job's ledger rows instead)
        out["usage"] = usage_object(used)
    plan = row.plan
    if plan:
        out["margin"] = {
            "objective": plan.get("objective"),
            "windows": plan.get("windows"),
            "estimate": plan.get("estimate"),
            "run_now": plan.get("run_now"),
            "saving": plan.get("saving"),
            "saving_text": saving_text(plan),
            "discount": plan.get("discount"),
            "lines": live_counts,
        }
    return out
