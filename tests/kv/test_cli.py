from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from margin.kv.cli import app
from margin.kv.evaluate import EvalConfig, run_eval


def test_codebook_command() -> None:
    result = CliRunner().invoke(app, ["codebook", "--bits", "2", "--dim", "64", "--law", "gaussian"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [round(c, 4) for c in payload["centroids_times_sqrt_d"]] == [-1.5104, -0.4528, 0.4528, 1.5104]


def test_codebook_out_of_range_is_a_usage_error_not_a_traceback() -> None:
    for args in (["--bits", "0"], ["--bits", "9"], ["--dim", "1"], ["--dim", "0", "--law", "gaussian"]):
        result = CliRunner().invoke(app, ["codebook", *args])  # ValueError / ZeroDivisionError tracebacks
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.exception)


def test_bytes_command_exports_measured_sizes() -> None:
    result = CliRunner().invoke(app, ["bytes", "--methods", "fp16,tq-mse-4,kivi-4"])
    assert result.exit_code == 0, result.output
    sizes = json.loads(result.output)["bytes_per_token"]
    assert sizes == {"fp16": 23040.0, "tq-mse-4": 6120.0, "kivi-4": 7200.0}
    bad = CliRunner().invoke(app, ["bytes", "--methods", "int5"])
    assert bad.exit_code != 0


def test_bytes_shapes_out_of_range_are_usage_errors_not_tracebacks() -> None:
    for args in (["--head-dim", "0"], ["--kv-heads", "-1"], ["--head-dim", "12", "--methods", "tq-mse-3"]):
        result = CliRunner().invoke(app, ["bytes", *args])  # RuntimeError / ValueError tracebacks
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.exception)


def test_methods_command_lists_names() -> None:
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 0
    assert "tq-prod-3" in result.output


def test_eval_synthetic_part_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "kv.json"
    cfg = EvalConfig(parts=["synthetic"], methods=["fp16", "tq-mse-3"], synthetic_vectors=1000)
    run_eval(cfg, out, lambda _msg: None)
    result = json.loads(out.read_text())
    assert {"versions", "hardware", "config", "synthetic", "bytes_per_token", "table"} <= result.keys()
    rows = {(r["dim"], r["bits"], r["law"]): r for r in result["synthetic"]["rows"]}
    assert abs(rows[64, 2, "beta"]["d_mse"] - 0.1145) < 0.01
    table = {r["method"]: r for r in result["table"]}
    assert table["tq-mse-3"]["synthetic_d_mse"] == rows[64, 3, "beta"]["d_mse"]
    assert table["fp16"]["compression"] == 1.0
    assert "| tq-mse-3 |" in out.with_suffix(".md").read_text()


def test_eval_rejects_unknown_part(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--parts", "nope", "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2


def test_eval_options_out_of_range_are_usage_errors_before_anything_runs(tmp_path: Path) -> None:
    """0 threads was a RuntimeError traceback once the model had loaded; `abc` lengths a ValueError traceback;
    -1 windows and -5 token passkeys ran, and wrote a result for them."""
    out = tmp_path / "r.json"
    for args in (
        ["--threads", "0"],
        ["--ppl-windows", "-1"],
        ["--ppl-context", "1"],
        ["--ppl-skip", "-1"],
        ["--passkey-lengths", "abc"],
        ["--passkey-lengths", "512,-5"],
    ):
        result = CliRunner().invoke(app, ["eval", "--quick", "--parts", "synthetic", "--out", str(out), *args])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (args, result.output)
        assert not out.exists(), args


def test_merge_refuses_a_file_that_is_not_a_result_in_one_line(tmp_path: Path) -> None:
    """Not JSON, a list, an object without parts, a part without methods, notes that are not UTF-8: one
    `error:` line naming the file, exit 2, nothing written (tracebacks before; `{}` wrote an empty table)."""
    from margin.cli import app as margin

    out = tmp_path / "m.json"
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"bytes_per_token": {}, "attention": {"methods": {}}}))
    for name, text in {
        "cut.json": '{"attention": {"meth',
        "list.json": "[1, 2]",
        "empty.json": "{}",
        "nomethods.json": '{"speed": {"rounds": 1}}',
        "deep.json": "[" * 5000 + "]" * 5000,
    }.items():
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(margin, ["kv", "merge", str(good), str(tmp_path / name), "--out", str(out)])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and said.startswith("error:") and name in said, (name, result.output)
        assert not out.exists(), name
    (tmp_path / "notes.md").write_bytes(b"caf\xe9")
    notes = CliRunner().invoke(
        margin, ["kv", "merge", str(good), "--notes", str(tmp_path / "notes.md"), "--out", str(out)]
    )
    assert notes.exit_code == 2 and "not UTF-8" in " ".join(notes.output.split()) and not out.exists()
    assert CliRunner().invoke(margin, ["kv", "merge", str(good), "--out", str(out)]).exit_code == 0 and out.exists()
