from __future__ import annotations

from pathlib import Path

import pytest

from margin.config import config_hash, is_loopback, load_settings, parse_settings
from margin.errors import ConfigError
from margin.ledger.measures import COLUMNS
from margin.specs import LEDGER_DIMENSIONS


def test_default_config_runs_the_local_model() -> None:
    settings = load_settings()
    assert settings.backends["local"].kind == "llamacpp"
    assert settings.models["smollm2-135m-instruct"].aliases == ["local"]
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8000
    assert settings.backends["local"].hardware is not None  # self-hosted: priced by TCO
    assert len(config_hash(settings)) == 16


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"servr": {}}, "servr"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"backends": {"b": {"kind": "nope"}}}, "backends.b"),
        ({"backends": {"b": {"kind": "fake", "speed": 1}}}, "speed"),
        ({"models": {"m": {"backend": "missing"}}}, "unknown backend"),
        ({"backends": {"b": {"kind": "fake"}}, "models": {"m": {"backend": "b", "aliases": ["m"]}}}, "used by both"),
        ({"backends": {"b": {"kind": "fake", "region": "mars"}}}, "region 'mars'"),
        ({"server": {"port": "eighty"}}, "server.port"),
        (  # every request the flag covered was a 404 naming a model the client never asked for
            {"flags": [{"name": "typo", "target": {"kind": "global"}, "action": "force_model", "model": "locl"}]},
            "flag 'typo': force_model's model `locl`",
        ),
        ({"budgets": [{"name": "b", "scope": {"kind": "team", "value": "a\tb"}, "usd": 1}]}, "control characters"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data)
    assert fragment in caught.value.message


def test_yaml_file_env_expansion_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM", "http://127.0.0.1:9/v1")
    path = tmp_path / "m.yaml"
    path.write_text("backends:\n  up: {kind: openai, base_url: ${UPSTREAM}}\nmodels:\n  m: {backend: up}\n")
    assert load_settings(path).backends["up"].base_url == "http://127.0.0.1:9/v1"  # type: ignore[union-attr]
    path.write_text("backends: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_a_force_model_flag_may_name_a_model_or_an_alias() -> None:
    flag = {"name": "f", "target": {"kind": "global"}, "action": "force_model"}
    served = {"backends": {"b": {"kind": "fake"}}, "models": {"m": {"backend": "b", "aliases": ["alias"]}}}
    for model in ("m", "alias"):  # its public name, its alias
        assert parse_settings({**served, "flags": [{**flag, "model": model}]}).flags[0].model == model


def test_hash_changes_with_settings() -> None:
    a = parse_settings({})
    b = parse_settings({"server": {"port": 9000}})
    assert config_hash(a) != config_hash(b) and config_hash(a) == config_hash(parse_settings({}))


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")


def test_a_rolled_up_tag_key_is_not_a_ledger_dimension() -> None:
    """A tag key named like a column the reports group by (`status`, `model`…) was rolled up into that
    dimension's daily rows: `--by status` listed the tag's values as statuses, counted twice (per team and
    across teams). The config refuses it; the reserved names are exactly the ledger's own groupings."""
    for name in ("status", "model", "key", "error"):
        with pytest.raises(ConfigError, match=f"rollup_keys: {name} is a dimension"):
            parse_settings({"tags": {"rollup_keys": ["feature", name]}})
    assert parse_settings({"tags": {"rollup_keys": ["feature", "cohort"]}}).tags.rollup_keys == ["feature", "cohort"]
    assert {*COLUMNS, "error", "hour", "day"} == LEDGER_DIMENSIONS
