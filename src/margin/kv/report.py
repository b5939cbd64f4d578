"""The method × bits table and the markdown rendering of `margin kv eval` results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = (
    ("method", "method", "{}"),
    ("nominal_bits", "bits", "{:g}"),
    ("bytes_per_token", "bytes/token", "{:.0f}"),
    ("compression", "× vs fp16", "{:.2f}"),
    ("synthetic_d_mse", "D_mse (unit, d=64)", "{:.4f}"),
    ("key_rel_mse", "key rel. MSE", "{:.4f}"),
    ("attention_kl", "attn KL", "{:.4f}"),
    ("topk_overlap", "top-8 overlap", "{:.3f}"),
    ("output_rel_err", "attn-out rel. err", "{:.4f}"),
    ("delta_ppl_pct", "Δppl %", "{:+.2f}"),
    ("token_kl", "token KL", "{:.4f}"),
    ("ppl_tokens", "ppl tokens", "{:.0f}"),
    ("top1_agreement", "top-1 agree", "{:.3f}"),
    ("passkey", "passkey", "{:.2f}"),
    ("decode_tok_s", "decode tok/s (CPU)", "{:.1f}"),
)


def _synthetic_d_mse(result: dict[str, Any], name: str) -> float | None:
    if not name.startswith("tq-mse-") or "synthetic" not in result:
        return None
    bits = name.removeprefix("tq-mse-")
    if not bits.isdigit():
        return None
    for row in result["synthetic"]["rows"]:
        if row["dim"] == 64 and row["law"] == "beta" and row["bits"] == int(bits):
            return float(row["d_mse"])
    return None


def _lookup(result: dict[str, Any], part: str, name: str, key: str) -> float | None:
    value = result.get(part, {}).get("methods", {}).get(name, {}).get(key)
    return None if value is None else float(value)


def _ppl_tokens(result: dict[str, Any], name: str) -> float | None:
    if _lookup(result, "ppl", name, "ppl") is None:
        return None
    own = _lookup(result, "ppl", name, "tokens_scored")
    return own if own is not None else float(result["ppl"]["tokens_scored"])


def build_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, sizes in result.get("bytes_per_token", {}).items():
        rows.append(
            {
                "method": name,
                **sizes,
                "synthetic_d_mse": _synthetic_d_mse(result, name),
                "key_rel_mse": _lookup(result, "attention", name, "key_rel_mse"),
                "attention_kl": _lookup(result, "attention", name, "softmax_kl"),
                "topk_overlap": _lookup(result, "attention", name, "topk_overlap"),
                "output_rel_err": _lookup(result, "attention", name, "output_rel_err"),
                "delta_ppl_pct": _lookup(result, "ppl", name, "delta_ppl_pct"),
                "token_kl": _lookup(result, "ppl", name, "kl"),
                "top1_agreement": _lookup(result, "ppl", name, "top1_agreement"),
                "ppl_tokens": _ppl_tokens(result, name),
                "passkey": _lookup(result, "passkey", name, "all"),
                "decode_tok_s": _lookup(result, "speed", name, "decode_tok_s"),
            }
        )
    rows.sort(key=lambda r: -float(r["bytes_per_token"]))
    return rows


def _cell(fmt: str, value: Any) -> str:
    return "—" if value is None else fmt.format(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_cell(fmt, row.get(key)) for key, _, fmt in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def equal_bytes(rows: list[dict[str, Any]]) -> list[str]:
    """For each baseline, the best TurboQuant variants (MSE, prod) that use no more bytes, by Δppl."""
    lines = []
    scored = [r for r in rows if r.get("delta_ppl_pct") is not None]
    for base in scored:
        if base["method"].startswith("tq-") or base["method"] in ("fp16", "bf16"):
            continue
        parts = [f"`{base['method']}` ({base['bytes_per_token']:.0f} B/token): Δppl {base['delta_ppl_pct']:+.2f}%"]
        for family in ("tq-mse-", "tq-prod-"):
            fits = [
                r for r in scored if r["method"].startswith(family) and r["bytes_per_token"] <= base["bytes_per_token"]
            ]
            if fits:
                best = min(fits, key=lambda r: r["delta_ppl_pct"])
                parts.append(f"best `{best['method']}` ({best['bytes_per_token']:.0f} B) {best['delta_ppl_pct']:+.2f}%")
            else:
                parts.append(f"no {family}* fits")
        lines.append("- " + "; ".join(parts))
    return lines


def _synthetic_md(synthetic: dict[str, Any]) -> list[str]:
    out = [
        "| d | law | b | D_mse | Lloyd-Max | paper | vs paper | D_prod·d | π/2·D_mse(b−1) | paper | vs paper | bias |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in synthetic["rows"]:
        out.append(
            f"| {r['dim']} | {r['law']} | {r['bits']} | {r['d_mse']:.4f} | {r['d_mse_theory']:.4f} | "
            f"{r['d_mse_paper']} | {r['d_mse_vs_paper_pct']:+.1f}% | {r['d_prod_times_d']:.4f} | "
            f"{r.get('d_prod_theory_times_d', float('nan')):.4f} | "
            f"{r['d_prod_paper_times_d']} | {r['d_prod_vs_paper_pct']:+.1f}% | "
            f"{r['prod_bias']:+.5f} ± {r['prod_bias_stderr']:.5f} |"
        )
    out += [
        "",
        "| b | computed N(0,1) centroids | published | max diff | Beta d=64 outer vs Gaussian |",
        "|---|---|---|---|---|",
    ]
    for c in synthetic["codebooks"]:
        out.append(
            f"| {c['bits']} | {c['computed']} | {c['published']} | {c['max_abs_diff']:.1e} | "
            f"{c['beta_d64_outer_vs_gaussian_pct']:+.1f}% |"
        )
    return out


def write_markdown(result: dict[str, Any], path: Path) -> None:
    hw, versions = result.get("hardware", {}), result.get("versions", {})
    lines = [
        "# margin kv eval — KV-cache formats on SmolLM2-135M-Instruct",
        "",
        f"Hardware: {hw.get('processor')} ({hw.get('cpu_count')} CPUs, {hw.get('torch_threads')} torch threads), "
        f"accelerator: {hw.get('accelerator')}. Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        markdown_table(result.get("table", [])),
        "",
    ]
    if result.get("notes"):
        lines[2:2] = [str(result["notes"]).strip(), ""]
    for part in ("attention", "ppl", "passkey", "speed"):
        if part in result:
            info = {k: v for k, v in result[part].items() if k != "methods"}
            reference = result[part].get("methods", {}).get("reference")
            extra = f"; uncompressed reference: {reference}" if reference else ""
            lines.append(f"- `{part}`: {info}{extra}")
    if "ppl" in result:
        lines += ["", "## Equal bytes", "", *equal_bytes(result.get("table", []))]
    if "passkey" in result:
        lines += ["", "## Passkey by length", "", "```", _passkey_text(result["passkey"]), "```"]
    if "synthetic" in result:
        lines += ["", "## Synthetic distortion (unit vectors)", "", *_synthetic_md(result["synthetic"])]
    path.write_text("\n".join(lines) + "\n")


def _passkey_text(passkey: dict[str, Any]) -> str:
    return "\n".join(f"{name:12s} {scores}" for name, scores in passkey["methods"].items())
