"""Variants of the shipped samples that several test trees need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def decentralised_pipeline() -> dict[str, Any]:
    """The MoAPipeline sample with `topology.mode: decentralised` (k=1, M=1): peers instead of a router.
    Its capacity target is dropped, since the central formula does not apply to peers."""
    doc: dict[str, Any] = yaml.safe_load((SAMPLES / "moa-pipeline.yaml").read_text())
    doc["spec"]["topology"] = {"mode": "decentralised", "neighbours": 1, "layers": 1}
    doc["spec"].pop("capacity", None)
    return doc
