from __future__ import annotations

from pathlib import Path
from typing import Any

from margin.kv.evaluate import merge_results, write_result
from margin.kv.generation import FILLER, passkey_prompt
from margin.kv.perplexity import summarize
from margin.kv.report import build_table, equal_bytes


class CharTokenizer:
    """One token per character: enough to check where the pass key lands."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_passkey_prompt_places_the_key_at_the_requested_depth() -> None:
    tok = CharTokenizer()
    for depth in (0.1, 0.5, 0.9):
        ids = passkey_prompt(tok, 2000, depth, 48213)
        text = "".join(chr(i) for i in ids)
        assert abs(len(ids) - 2000) <= len(FILLER)
        where = text.index("48213") / len(text)
        assert abs(where - depth) < 0.08
        assert text.endswith("The pass key is")


def test_summarize_perplexity_windows() -> None:
    windows = [
        {"reference": {"nll": 100.0, "kl": 0.0, "top1": 50.0}, "m": {"nll": 110.0, "kl": 5.0, "top1": 40.0}},
        {"reference": {"nll": 100.0, "kl": 0.0, "top1": 50.0}, "m": {"nll": 110.0, "kl": 5.0, "top1": 40.0}},
    ]
    out = summarize(windows, predicted=100)
    assert out["reference"]["delta_ppl_pct"] == 0.0
    assert abs(out["m"]["delta_ppl_pct"] - 100 * (2.718281828 ** (20 / 100) - 1)) < 1e-6
    assert out["m"]["kl"] == 0.1
    assert out["m"]["top1_agreement"] == 0.8


def _result(methods: dict[str, tuple[float, float]]) -> dict[str, Any]:
    return {
        "bytes_per_token": {
            n: {"nominal_bits": 4.0, "bytes_per_token": b, "compression": 1.0} for n, (b, _) in methods.items()
        },
        "ppl": {
            "methods": {n: {"delta_ppl_pct": d, "kl": 0.0, "top1_agreement": 1.0} for n, (_, d) in methods.items()}
        },
    }


def test_equal_bytes_picks_the_best_turboquant_that_fits() -> None:
    result = _result(
        {"kivi-4": (7200, 1.0), "tq-mse-4": (6120, 4.0), "tq-mse-3": (4680, 9.0), "tq-prod-4": (6300, 30.0)}
    )
    lines = equal_bytes(build_table(result))
    assert len(lines) == 1
    assert "best `tq-mse-4` (6120 B) +4.00%" in lines[0]
    assert "best `tq-prod-4` (6300 B) +30.00%" in lines[0]
    table = build_table(result)
    assert [r["method"] for r in table] == ["kivi-4", "tq-prod-4", "tq-mse-4", "tq-mse-3"]


def test_merge_keeps_parts_of_both_runs(tmp_path: Path) -> None:
    a, b = _result({"kivi-4": (7200, 1.0)}), _result({"tq-mse-4": (6120, 4.0)})
    a["config"], b["config"] = {"ppl": {"seed": 0}, "attention": {"seed": 1}}, {"attention": {"seed": 0}}
    a["attention"] = {"tokens": 8, "methods": {"kivi-4": {"softmax_kl": 0.1}}}
    b["attention"] = {"tokens": 8, "methods": {"tq-mse-4": {"softmax_kl": 0.2}}}
    del a["ppl"]
    write_result(a, tmp_path / "a.json")
    write_result(b, tmp_path / "b.json")
    merged = merge_results([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "m.json")
    assert set(merged["bytes_per_token"]) == {"kivi-4", "tq-mse-4"}
    assert set(merged["config"]) == {"ppl", "attention"}
    assert merged["config"]["attention"] == [{"seed": 1}, {"seed": 0}]
    assert set(merged["attention"]["methods"]) == {"kivi-4", "tq-mse-4"}
    assert (tmp_path / "m.md").read_text().count("| tq-mse-4 |") == 1


def test_combine_perplexity_pools_by_tokens() -> None:
    import math

    from margin.kv.evaluate import combine_perplexity

    def run(tokens: int, ref_ppl: float, m_ppl: float) -> dict[str, Any]:
        rows = {
            "reference": {"ppl": ref_ppl, "kl": 0.0, "top1_agreement": 1.0},
            "m": {"ppl": m_ppl, "kl": 0.2, "top1_agreement": 0.9},
        }
        return {"windows": 1, "context": 8, "tokens_scored": tokens, "methods": rows}

    first = run(100, 10.0, 11.0)
    first["methods"]["only-first"] = {"ppl": 12.0, "delta_ppl_pct": 20.0, "kl": 0.5, "top1_agreement": 0.5}
    pooled = combine_perplexity(first, run(300, 20.0, 22.0))
    assert pooled["methods"]["only-first"]["tokens_scored"] == 100
    assert pooled["methods"]["only-first"]["delta_ppl_pct"] == 20.0
    assert pooled["methods"]["m"]["tokens_scored"] == 400
    assert pooled["tokens_scored"] == 400
    assert len(pooled["runs"]) == 2
    ref = math.exp((100 * math.log(10) + 300 * math.log(20)) / 400)
    assert math.isclose(pooled["methods"]["reference"]["ppl"], ref)
    assert math.isclose(pooled["methods"]["m"]["delta_ppl_pct"], 10.0)
    assert math.isclose(pooled["methods"]["m"]["kl"], 0.2)
