"""The per-key cap on concurrent streams (`admission.max_streams_per_key`): a stream holds a slot from
admission until it ends, however it ends (finished, client gone, write timeout, upstream cut)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class StreamSlots:
    """Open streams per API key in this process (each gateway process counts its own)."""

    cap: int | None
    _open: dict[str, int] = field(default_factory=dict)

    def acquire(self, key: str) -> bool:
        held = self._open.get(key, 0)
        if self.cap is not None and held >= self.cap:
            return False
        self._open[key] = held + 1
        return True

    def release(self, key: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)
