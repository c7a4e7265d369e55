"""The per-key token buckets (`router.buckets`): local ones, and the file-backed table the workers of a pod
share, here mapped twice (as two workers do), plus a real second process taking from the same bucket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubemoe.router import buckets
from kubemoe.router.buckets import LocalBuckets, SharedBuckets, create_shared_file


def _table(
    tmp_path: Path, rate: float = 1.0, burst: float = 3, workers: int = 2
) -> tuple[SharedBuckets, SharedBuckets]:
    path = str(tmp_path / "rate.buckets")
    create_shared_file(path)
    return (
        SharedBuckets(path, rate, burst, workers=workers),
        SharedBuckets(path, rate, burst, workers=workers),
    )


def test_local_bucket_grants_its_burst_then_refills_at_its_rate() -> None:
    b = LocalBuckets(rate=2.0, burst=2)
    assert [b.take("k", 10.0) for _ in range(2)] == [0.0, 0.0]
    assert b.take("k", 10.0) == pytest.approx(0.5)
    assert b.take("k", 10.5) == 0.0
    assert b.take("other", 10.5) == 0.0  # one bucket per key


def test_two_mappings_of_the_table_are_one_bucket_per_key(tmp_path: Path) -> None:
    one, two = _table(tmp_path)
    assert [one.take("alice", 100.0), two.take("alice", 100.0), one.take("alice", 100.0)] == [0.0] * 3
    assert two.take("alice", 100.0) == pytest.approx(1.0)  # the burst of 3 is spent over both
    assert one.take("bob", 100.0) == 0.0  # another key, another slot
    assert two.take("alice", 101.0) == 0.0  # refilled one token in one second, seen by either
    assert one.take("alice", 101.0) > 0
    # A clock read just before another worker's (each reads CLOCK_MONOTONIC, then takes the lock) adds nothing.
    assert one.take("alice", 100.5) > 0
    one.close()
    two.close()


def test_another_process_takes_from_the_same_bucket(tmp_path: Path) -> None:
    one, _ = _table(tmp_path, rate=0.001, burst=3)
    assert one.take("alice", 5.0) == 0.0
    code = (
        "import sys; from kubemoe.router.buckets import SharedBuckets; "
        "b = SharedBuckets(sys.argv[1], 0.001, 3, workers=2); "
        "print([b.take('alice', 5.0) == 0.0 for _ in range(3)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "rate.buckets")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[True, True, False]", out.stderr
    assert one.take("alice", 5.0) > 0


def test_a_file_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="is not a bucket table"):
        SharedBuckets(str(path), 1.0, 1, workers=2)


def test_a_full_table_falls_back_to_a_bucket_per_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(buckets, "SLOTS", 2)
    monkeypatch.setattr(buckets, "FILE_BYTES", 2 * 32)
    one, two = _table(tmp_path, rate=0.001, burst=4, workers=2)
    assert one.take("a", 1.0) == 0.0
    assert two.take("b", 1.0) == 0.0
    # "c" finds no slot: each worker limits it alone, to its share (burst ceil(4 / 2) = 2).
    assert [one.take("c", 1.0) for _ in range(3)][2] > 0
    assert [two.take("c", 1.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert "rate-limit table full (2 keys): key c is limited per worker" in caplog.text
