"""The commands that only read the ledger (report, export focus, audit list/verify, keys list, the rules' and
batches' lists, db current) never write to it: a ledger at this margin's revision is read as it is (its file's
bytes and mtime unchanged, read-only files included), and one at another revision is refused with exit 3 naming
`margin db upgrade`, left as it was. Before, report and export ran the migrations on the database they were
given (an older production copy was upgraded in place), and `db current` created a file that was not there."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from margin.cli import app
from margin.ledger import db
from tests.helpers import fake_settings
from tests.report.ledgers import load

runner = CliRunner()
WINDOW = ["--since", "2026-11-01", "--until", "2026-11-16"]
READERS = [
    ["report", *WINDOW, "--json"],
    ["report", *WINDOW, "--view", "overview", "--json"],
    ["audit", "list"],
    ["audit", "verify"],
    ["keys", "list"],
    ["budgets", "list"],
    ["batches", "list"],
]


def _ledger(path: Path, revision: str = "head") -> Path:
    url = f"sqlite:///{path}"
    db.upgrade(url, revision)
    if revision == "head":
        engine = db.make_sync_engine(url)
        load(engine)
        engine.dispose()
    return path


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _invoke(args: list[str], ledger: Path) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--db", str(ledger)])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    return result.exit_code, " ".join(result.output.split())


def test_a_current_ledger_is_read_without_a_write_even_read_only(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "prod-copy.db")
    os.chmod(ledger, stat.S_IRUSR | stat.S_IRGRP)  # r--r-----: a write would fail
    before = _fingerprint(ledger)
    code, output = _invoke(["report", *WINDOW, "--json"], ledger)
    assert code == 0 and '"requests":7,' in output, output
    for args in READERS:
        code, output = _invoke(args, ledger)
        assert code == 0, (args, output)
    out = tmp_path / "focus.csv"
    code, output = _invoke(["export", "focus", "--period", "2026-11", "--out", str(out)], ledger)
    assert code == 0 and out.stat().st_size > 0, output
    assert _fingerprint(ledger) == before


def test_an_older_ledger_is_refused_not_upgraded(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "old.db", "0026")
    before = _fingerprint(ledger)
    for args in [*READERS, ["export", "focus", "--period", "2026-11", "--out", str(tmp_path / "f.csv")]]:
        code, output = _invoke(args, ledger)
        assert code == 3, (args, output)
        assert "revision 0026, older than" in output and f"margin db upgrade --db {ledger}" in output, output
    assert _fingerprint(ledger) == before and db.current_revision(f"sqlite:///{ledger}") == "0026"
    assert not (tmp_path / "f.csv").exists()
    assert runner.invoke(app, ["db", "upgrade", "--db", str(ledger)]).exit_code == 0  # what the message says
    assert _invoke(["report", *WINDOW, "--json"], ledger)[0] == 0


def test_a_ledger_from_a_newer_margin_or_no_ledger_is_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "new.db")
    engine = db.make_sync_engine(f"sqlite:///{ledger}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    code, output = _invoke(["report", *WINDOW], ledger)
    assert code == 3 and "revision 0999, which this margin" in output and "does not know" in output, output
    empty = tmp_path / "empty.db"
    empty.touch()
    code, output = _invoke(["report", *WINDOW], empty)
    assert code == 3 and "not a margin ledger" in output, output
    assert empty.stat().st_size == 0


@pytest.mark.parametrize("args", [["db", "current"], ["report"], ["keys", "list"]])
def test_a_missing_ledger_is_not_created(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "typo.db"
    result = runner.invoke(app, [*args, "--db", str(missing)])
    assert not missing.exists(), result.output
    if args[0] == "db":
        assert result.exit_code == 0 and result.output.strip() == "empty"
    else:
        assert result.exit_code == 2 and "no ledger at" in result.output


def test_postgres_an_older_ledger_is_refused_and_reads_are_read_only(tmp_path: Path, fresh_postgres: str) -> None:
    db.upgrade(fresh_postgres, "0026")
    config = tmp_path / "pg.yaml"
    settings = fake_settings(tmp_path / "unused.db", storage={"ledger": fresh_postgres})
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    refused = runner.invoke(app, ["report", *WINDOW, "--config", str(config)])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 3 and "`margin db upgrade` (with the same --config)" in said, said
    assert db.current_revision(fresh_postgres) == "0026"
    db.upgrade(fresh_postgres)
    assert runner.invoke(app, ["report", *WINDOW, "--config", str(config), "--json"]).exit_code == 0
    engine = db.read_only_engine(fresh_postgres)  # what the read commands use
    with pytest.raises(sa.exc.InternalError, match="read-only transaction"), engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM ledger"))
    engine.dispose()


def test_a_ledger_in_a_folder_nobody_can_write_is_read_immutable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL file's reader makes a `-shm` beside it, which a read-only folder refuses: there (nothing can write
    to the ledger either, no journal can be made) it is opened `immutable`, and nothing is made beside it. As
    root every folder is writable, so the folder's answer is simulated."""
    ledger = _ledger(tmp_path / "ro" / "l.db")
    before = _fingerprint(ledger)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == ledger.parent else real(path, mode))
    code, output = _invoke(["report", *WINDOW, "--json"], ledger)
    assert code == 0 and '"requests":7,' in output, output
    assert sorted(p.name for p in ledger.parent.iterdir()) == ["l.db"] and _fingerprint(ledger) == before
