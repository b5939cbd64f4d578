"""What the load generator keeps of every request: raw client-side timestamps, so any convention can be
recomputed later. Times are seconds from the run's start (one `time.perf_counter()` origin per run)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TokenSource = Literal["usage", "chunks"]


@dataclass(slots=True)
class RequestRecord:
    index: int
    sent_s: float  # the request left the client
    scheduled_s: float | None = None  # open loop: when it was due to leave
    chunk_s: list[float] = field(default_factory=list)  # every streamed chunk carrying text
    end_s: float | None = None  # the stream's last event (before [DONE])
    input_tokens: int | None = None  # from the server's usage; None when it sent none
    output_tokens: int = 0
    tokens_source: TokenSource = "chunks"  # "usage": server-reported; "chunks": one token per text chunk
    ok: bool = False
    status: int | None = None
    error: str | None = None
    prompt_len_est: int | None = None  # the prompt source's own estimate of input tokens

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_s[0] - self.sent_s if self.chunk_s else None

    @property
    def e2el_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        """(E2EL − TTFT) / (output_tokens − 1); undefined (None) with fewer than 2 output tokens."""
        ttft, e2el = self.ttft_s, self.e2el_s
        if ttft is None or e2el is None or self.output_tokens < 2:
            return None
        return (e2el - ttft) / (self.output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.chunk_s)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("sent_s", "scheduled_s", "end_s"):
            if data[key] is not None:
                data[key] = round(data[key], 6)
        data["chunk_s"] = [round(t, 6) for t in self.chunk_s]
        return data
