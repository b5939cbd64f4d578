"""An error is one line however long (a path under a deep temporary directory, a long file name): rich folded it
at 80 columns when stderr is not a terminal (CI logs, a pipe), which cut a path in two (`run .json`)."""

from __future__ import annotations

import pytest

from margin.terminal import print_error


def test_a_long_error_is_one_line_on_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    path = "/tmp/" + "deep-directory/" * 12 + "run.json"
    print_error(f"{path} is not a run's record (not JSON); use another folder")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path in err, err
