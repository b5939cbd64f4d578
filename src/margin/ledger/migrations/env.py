"""Alembic environment: margin runs migrations programmatically (`margin db upgrade`, and at start-up)."""

from __future__ import annotations

from alembic import context

from margin.ledger.models import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
