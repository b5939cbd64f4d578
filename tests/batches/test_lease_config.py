"""A job's lease must outlast its worker's renewals: with `batches.poll_s` over `lease_s` (each valid alone), a
second worker (`margin serve --workers 2`) took a job between two renewals while its first still ran it, put that
worker's line in flight back to pending and ran it again (11 ledger rows, 11 paid calls, for 10 lines)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from margin.specs import BatchConfig


def test_a_lease_shorter_than_three_polls_is_refused() -> None:
    with pytest.raises(ValidationError, match="lease_s must be at least 3"):
        BatchConfig.model_validate({"poll_s": 2.0, "lease_s": 0.5})
    with pytest.raises(ValidationError, match="lease_s must be at least 3"):
        BatchConfig.model_validate({"poll_s": 20.0, "lease_s": 30.0})  # set, and shorter than 3 polls
    assert BatchConfig.model_validate({"poll_s": 10.0}).lease == 30.0  # 3 polls: taken
    assert BatchConfig.model_validate({"poll_s": 0.05, "lease_s": 1.0}).lease == 1.0


def test_an_unset_lease_outlasts_a_long_poll() -> None:
    """A config with a long `poll_s` and no `lease_s` (valid before the bound) starts: its lease is 3 passes."""
    assert BatchConfig.model_validate({"poll_s": 20.0}).lease == 60.0
    assert BatchConfig.model_validate({}).lease == 30.0
