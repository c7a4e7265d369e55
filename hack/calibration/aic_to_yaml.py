"""Turn aiconfigurator `cli default` logs into kubemoe's calibration data (catalog/data/calibration.yaml).

aiconfigurator runs in its own venv outside the repo (see hack/calibration/README.md); this script only
reads its logs: the "agg Top Configurations" table of each run, ISL 2000 / OSL 500, TTFT 2 s, TPOT 50 ms.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

#: aiconfigurator system -> the catalog instance type with that GPU.
SYSTEMS = {"h100_sxm": "p5.48xlarge", "h200_sxm": "p5en.48xlarge", "b200_sxm": "p6-b200.48xlarge"}
ROW = re.compile(
    r"^\|\s+(\d+)\s+\|\s+vllm\s+\|\s+([\d.,]+)\s+\|\s+([\d.]+)\s+\|\s+([\d.]+)\s+\|\s+([\d.]+)\s+\|.*?\|\s+(\d+) \(=(\d+)x(\d+)\)\s+\|.*?\|\s+(\d+)\s+\|\s+(\d+)\s+\|.*?\|\s+(tp\d+pp\d+dp\d+etp\d+ep\d+)\s+\|\s+(\d+)\s+\|"
)


def parse(log: Path) -> list[dict[str, object]]:
    rows = []
    for line in log.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        par = dict(re.findall(r"([a-z]+)(\d+)", m.group(11)))
        gpus = int(m.group(10))
        per_gpu = float(m.group(2).replace(",", ""))
        rows.append(
            {
                "rank": int(m.group(1)),
                "tp": int(par["tp"]),
                "pp": int(par["pp"]),
                "dp": int(par["dp"]),
                "moeTp": int(par["etp"]),
                "moeEp": int(par["ep"]),
                "gpusPerReplica": gpus,
                "tokensPerSecondPerReplica": round(per_gpu * gpus, 1),
                "concurrencyPerReplica": int(m.group(7)),
                "ttftMs": float(m.group(5)),
                "tokensPerSecondPerUser": float(m.group(3)),
            }
        )
    return rows


def main(logs: list[str]) -> None:
    out = []
    for name in logs:
        log = Path(name)
        text = log.read_text()
        model = re.search(r"Model: (\S+) \(is_moe", text)
        system = re.search(r"system='(\w+)'", text) or re.search(r"--system (\w+)", text)
        rows = parse(log)
        if not (model and rows and system):
            continue
        # A model passed as a local directory (aic-models/<org>--<name>) is named by its HF id.
        model_id = (
            model.group(1).rsplit("/", 1)[-1].replace("--", "/") if "--" in model.group(1) else model.group(1)
        )
        out.append(
            {
                "model": model_id,
                "system": system.group(1),
                "instanceType": SYSTEMS.get(system.group(1)),
                "rows": rows,
            }
        )
    yaml.safe_dump({"aiconfigurator": out}, sys.stdout, sort_keys=False, width=120)


if __name__ == "__main__":
    main(sys.argv[1:])
