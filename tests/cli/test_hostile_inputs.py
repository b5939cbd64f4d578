"""Hostile and malformed inputs to the `margin` commands: each answered with one `error:` line and a non-zero
exit, never a traceback, a hang or a silently wrong result. Every case here failed before (a traceback, a hang,
or exit 0 with a wrong answer)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from margin import datafiles
from margin.cli import app
from margin.errors import ConfigError, InvalidRequest
from margin.evals import cache as cache_eval
from margin.ledger import db as ledger_db

runner = CliRunner()
MIB = 1024 * 1024

WORKLOAD = "model: llama-3.1-8b\nrate_rps: 1\ninput_tokens: 100\noutput_tokens: 200\n"


def refused(args: list[str], *, code: int = 2) -> str:
    """The output of a command that must fail cleanly with `code`."""
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a traceback
    assert "error" in result.output.lower() and "Traceback" not in result.output
    return " ".join(result.output.split())


def test_alias_bomb_config_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    lines.append("tags: {header_keys: *h}")  # 9^8 strings once expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines))
    started = time.perf_counter()
    assert "aliases counted" in refused(["config", "check", str(path)])
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"a: " + b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),  # was RecursionError
        (b"server:\n  port: \xff\xfe\n", "not UTF-8"),  # was UnicodeDecodeError
    ],
)
def test_malformed_config_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert expected in refused(["config", "check", str(path)])


def test_config_that_is_a_directory_or_missing(tmp_path: Path) -> None:
    assert "Is a directory" in refused(["config", "check", str(tmp_path)])
    assert "No such file" in refused(["config", "check", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("rate_rps: .inf", "rate_rps"),  # OverflowError
        ("rate_rps: 1e12", "rate_rps"),  # 10^12 requests/s planned as if it meant something
        ("input_tokens: 100000000000000000000000000000", "input_tokens"),  # TypeError: int past 64 bits
        ("input_tokens: {dist: empirical, values: [1, 2], weights: [0, 0]}", "weights must not all be 0"),
        ("input_tokens: {dist: empirical, values: [1, 2], weights: [-1, 2]}", "weights.0"),  # silently used
        ("input_tokens: {dist: uniform, min: 500, max: 10}", "min must not exceed max"),  # silently used
        ("search: {devices: [0]}", "search.devices.0"),  # ZeroDivisionError
        ("search: {devices: [1000000000000]}", "search.devices.0"),  # 10^12 devices priced
        ("energy_overhead: 1e309", "energy_overhead"),  # decimal.InvalidOperation
        ("slo: {tpot_ms: .inf}", "slo.tpot_ms"),
    ],
)
def test_plan_place_refuses_absurd_workloads(tmp_path: Path, extra: str, expected: str) -> None:
    key = extra.split(":", 1)[0]
    kept = [line for line in WORKLOAD.splitlines() if not line.startswith(key)]
    path = tmp_path / "w.yaml"
    path.write_text("\n".join([*kept, extra]) + "\n")
    output = refused(["plan", "place", "--workload", str(path), "--json"])
    assert "invalid workload" in output and expected in output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--devices", "0"], "devices must be 1 to"),  # ZeroDivisionError
        (["--devices", "1000000000000"], "devices must be 1 to"),
        (["--input", "100000000000000000000000"], "--input and --output"),  # ran for minutes
        (["--batch", "10000000000"], "--batch"),
        (["--region", "local", "--rate", "nan"], "--rate"),  # exit 0 with NaN economics
        (["--rate", "-1"], "--rate"),
        (["--ttft-ms", "nan"], "--ttft-ms"),
        (["--energy-overhead", "-1"], "--energy-overhead"),
        (["--threads", "0"], "threads must be 1 to"),
    ],
)
def test_plan_single_config_bounds(args: list[str], expected: str) -> None:
    started = time.perf_counter()
    output = refused(["plan", "--model", "llama-3.1-8b", "--hardware", "h100-sxm", *args, "--json"])
    assert expected in output
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tokens-per-s", "0"], "--tokens-per-s"),  # ValueError traceback
        (["--hourly-usd", "-2"], "--hourly-usd"),  # printed a negative cost
        (["--hourly-usd", "1e309", "--tokens-per-s", "1e-300"], "--hourly-usd"),  # InvalidOperation
        (["--watts", "nan"], "--watts"),  # printed "$NaN per 1K tokens"
        (["--watts", "300", "--pue", "0"], "--pue"),
        (["--energy-overhead", "-5"], "--energy-overhead"),  # a negative price
    ],
)
def test_cost_refuses_absurd_numbers(args: list[str], expected: str) -> None:
    base = {"--hourly-usd": "2", "--tokens-per-s": "100"}
    flags = dict(zip(args[::2], args[1::2], strict=True))
    merged = [part for pair in {**base, **flags}.items() for part in pair]
    assert expected in refused(["cost", *merged])


def test_revenue_csv_not_utf8_overlong_field_or_huge_amount(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    ledger_db.upgrade(f"sqlite:///{db}")  # report reads a ledger that is there
    cases = {
        b"feature,customer,usd\nf,,\xff\n": "not UTF-8",  # UnicodeDecodeError
        b"feature,customer,usd\nf," + b"x" * 200_000 + b",1\n": "not CSV",  # csv.Error
        b"feature,customer,usd\nf,,1e999999\n": "usd must be a finite amount",
    }
    for number, (content, expected) in enumerate(cases.items()):
        path = tmp_path / f"revenue{number}.csv"
        path.write_bytes(content)
        assert expected in refused(["report", "--db", db, "--view", "margin", "--revenue", str(path)])


def test_feedback_csv_with_an_overlong_field(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("request_id,score\nr1," + "1" * 200_000 + "\n")
    assert "not CSV" in refused(["feedback", "import", str(path), "--db", str(tmp_path / "x.db")])


def test_rate_limit_past_64_bits_is_held_not_a_traceback(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    result = runner.invoke(app, ["limits", "set", "--scope", "global", "--rpm", "1" + "0" * 26, "--db", db])
    assert result.exit_code == 0, result.output
    assert '"rpm":9007199254740992' in result.output.replace("\n", "")  # was TypeError: Integer exceeds 64-bit
    assert runner.invoke(app, ["limits", "list", "--db", db]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--name", "k" * 10_000], "name: String should have at most 128"),  # was stored
        (["--name", "a\tb"], "name: String should match"),  # control characters were stored
        (["--name", "x", "--tag", "team=a", "--tag", "team=b"], "'team' is given twice"),  # the last one won
        (["--name", "x", "--tag", "a=" + "v" * 1_000], "tags.a"),
    ],
)
def test_keys_create_checks_what_the_admin_api_checks(tmp_path: Path, args: list[str], expected: str) -> None:
    assert expected in refused(["keys", "create", *args, "--db", str(tmp_path / "x.db")])


def test_eval_cache_bad_pairs_and_rates_fail_before_embedding(tmp_path: Path) -> None:
    common = ["eval", "cache", "--vectors-dir", "", "--out", ""]
    cases = {
        "not json\n": "cannot read pairs",  # was an InvalidRequest traceback
        "[1, 2]\n": "is not an object",  # was TypeError
        '{"a": "x", "b": "y", "duplicate": "maybe"}\n': "duplicate must be",  # "maybe" counted as true
        "": "at least 2 pairs",  # exit 0 with an empty report
    }
    for number, (content, expected) in enumerate(cases.items()):
        path = tmp_path / f"pairs{number}.jsonl"
        path.write_text(content)
        assert expected in refused([*common, "--pairs", str(path)])
    assert "every delta" in refused([*common, "--delta", "nan"])  # was ValueError after embedding


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--concurrency", "0"], "concurrency must be 1 to"),  # exit 0, nothing measured
        (["--concurrency", "100000000"], "concurrency must be 1 to"),  # hung
        (["--rate", "nan"], "request rate must be positive"),  # exit 0, nothing measured
        (["--concurrency", "1", "--pue", "nan"], "--pue"),  # ValidationError traceback
        (["--concurrency", "1", "--timeout", "nan"], "--timeout"),
        (["--concurrency", "1", "--extra-body", "[1]"], "--extra-body must be a JSON object"),
    ],
)
def test_bench_argument_validation(args: list[str], expected: str) -> None:
    base = ["bench", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--num-requests", "1", "--warmup", "0"]
    assert expected in refused([*base, *args])


def test_bench_against_an_unreachable_url_fails_quickly_with_exit_1() -> None:
    started = time.perf_counter()
    args = ["bench", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--concurrency", "1"]
    output = refused([*args, "--num-requests", "2", "--warmup", "0", "--timeout", "5"], code=1)
    assert "no request succeeded" in output  # was exit 0 under a table of zeros
    assert time.perf_counter() - started < 10


def test_a_db_that_is_no_ledger_or_an_unknown_revision_is_one_error_line(tmp_path: Path) -> None:
    """Before: SQLAlchemy's and alembic's tracebacks."""
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    assert "file is not a database" in refused(["report", "--db", str(not_a_db)])
    assert "is a folder, not a ledger file" in refused(["report", "--db", str(tmp_path)])
    assert "nope" in refused(["db", "upgrade", "--revision", "nope", "--db", str(tmp_path / "x.db")])


def test_data_files_are_read_bounded_and_only_as_far_as_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip bomb (1 GiB of zeros in ~1 MB) and a file that is one endless line are refused after the cap
    (here 1 MiB) is read, not decompressed or read whole; `--limit N` reads the first N lines only: a pairs
    file whose line N+1 is broken loads. Before: the whole file was read (and decompressed) first."""
    monkeypatch.setattr(datafiles, "MAX_DATA_BYTES", MIB)
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as handle:
        for _ in range(1024):
            handle.write(b"\0" * MIB)
    assert bomb.stat().st_size < 2 * MIB
    endless = tmp_path / "endless.jsonl"
    endless.write_bytes(b'{"prompt": "' + b"a" * (2 * MIB))
    for path in (bomb, endless):
        with pytest.raises(ConfigError, match="holds more than"):
            list(datafiles.read_lines(path))
        with pytest.raises(ConfigError, match="holds more than"):
            datafiles.read_bytes(path)
    pairs = tmp_path / "pairs.jsonl"
    good = '{"a": "how do I cook rice", "b": "how to cook rice", "duplicate": true}\n' * 3
    pairs.write_text(good + "not json at all\n")
    assert len(cache_eval.load_pairs(pairs, limit=3).duplicate) == 3
    with pytest.raises(InvalidRequest, match="cannot read pairs"):
        cache_eval.load_pairs(pairs)
    assert "holds more than" in refused(["bench", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
                                          "--dataset", f"jsonl:{endless}", "--num-requests", "1", "--concurrency", "1",
                                          "--warmup", "0"])  # fmt: skip


def test_an_error_quoting_markup_or_escapes_is_printed_as_text(tmp_path: Path) -> None:
    """The error line quotes what was given; rich read it as markup (`[/x]`: a MarkupError traceback, exit 1;
    `[link=…]`: a hyperlink) and passed an ESC sequence to the terminal."""
    db = str(tmp_path / "l.db")
    assert "'[/x]' is neither" in refused(["report", "--since", "[/x]", "--db", db])
    assert "'[link=https://evil.example]24h[/link]' is" in refused(
        ["report", "--since", "[link=https://evil.example]24h[/link]", "--db", db]
    )
    assert "'\\x1b[2J\\u202e24h' is" in refused(["report", "--since", "\x1b[2J\u202e24h", "--db", db])


def test_rules_whose_scope_reads_as_markup_are_saved_listed_and_deleted(tmp_path: Path) -> None:
    """A scope value is any text (PUT /admin/budgets takes it too); `saved` and `list` read it as markup."""
    db = str(tmp_path / "l.db")
    for args in (["set", "b", "--scope", "team=[/red]t", "--usd", "5"], ["list"], ["delete", "b"]):
        result = runner.invoke(app, ["budgets", *args, "--db", db])
        assert result.exit_code == 0 and result.exception is None, result.output
        assert args[0] == "delete" or "[/red]t" in result.output


def test_an_output_path_that_is_a_folder_is_one_error_line(tmp_path: Path) -> None:
    from margin.cache.encoder import DEFAULT_MODEL, texts_digest
    from margin.evals.cache import pairs_from_records
    from tests.evals.test_cache_eval import synthetic_records

    records, table = synthetic_records(40, seed=0)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    texts = pairs_from_records(records).texts
    np.save(tmp_path / f"chunk-{texts_digest(texts, DEFAULT_MODEL)}.npy", np.asarray([table[t] for t in texts]))
    folder = tmp_path / "out"
    folder.mkdir()
    args = ["eval", "cache", "--pairs", str(pairs), "--vectors-dir", str(tmp_path), "--out", str(folder)]
    result = runner.invoke(app, args)  # was an IsADirectoryError traceback
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and f"cannot use {folder}: Is a directory" in said, result.output


def test_a_usd_budget_under_one_nano_dollar_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "l.db")  # 1e-10 was saved, a cap of 0 nano-USD in the ledger: every request refused
    assert "usd" in refused(["budgets", "set", "b", "--scope", "global", "--usd", "0.0000000001", "--db", db])
    result = runner.invoke(app, ["budgets", "set", "b", "--scope", "global", "--usd", "0.000000001", "--db", db])
    assert result.exit_code == 0, result.output
