"""hack/bench/_opbench.py ``wait_quiet``: the operator benchmark's steady-state window starts only once a
whole quiet period went by with no write to the operator's kinds, and it does not wait for ever when the
writes never stop (they then count in the window). A scripted stand-in for ``Api.request_counts`` (the API
server's counters) drives it; the benchmark runs it against the real API server (`make bench-quick`)."""

from __future__ import annotations

import time
from typing import Any

from hack.bench import _opbench as ob


class Counters:
    """``request_counts`` that grows by one Deployment status PUT per call until ``writes_left`` is spent,
    plus a read that never counts."""

    def __init__(self, writes_left: int | None) -> None:
        self.writes_left, self.puts, self.gets = writes_left, 0.0, 0.0

    def request_counts(self) -> dict[tuple[str, str, str], float]:
        self.gets += 1
        if self.writes_left is None or self.writes_left > 0:
            self.puts += 1
            if self.writes_left is not None:
                self.writes_left -= 1
        return {("PUT", "deployments", "status"): self.puts, ("GET", "moemodels", ""): self.gets}


def test_it_waits_out_the_echoes_then_a_whole_quiet_period() -> None:
    api: Any = Counters(writes_left=4)
    t0 = time.monotonic()
    waited, seen = ob.wait_quiet(api, quiet_s=0.4, timeout_s=10)
    assert time.monotonic() - t0 >= waited >= 0.4
    assert waited < 5
    # The first read takes one write; the next three are echoes it saw and reports.
    assert seen == {"PUT deployments/status": 3}


def test_writes_that_never_stop_end_it_at_the_timeout() -> None:
    api: Any = Counters(writes_left=None)
    waited, seen = ob.wait_quiet(api, quiet_s=0.4, timeout_s=1.0)
    assert 1.0 <= waited < 2.0
    assert seen["PUT deployments/status"] >= 2


def test_reads_alone_are_quiet() -> None:
    api: Any = Counters(writes_left=0)
    waited, seen = ob.wait_quiet(api, quiet_s=0.3, timeout_s=10)
    assert 0.3 <= waited < 1.5
    assert seen == {}
