"""Draws docs/figures/methods.png from the method table of docs/results.md (the table is the one
source of the numbers): ``.venv/bin/python docs/figures/methods.py``."""
import re
from pathlib import Path

import pandas as pd

from idd_lib import plots

HERE = Path(__file__).resolve().parent
ROW = re.compile(r"^\| `(?P<method>[^`]+)` \|.*\| (?P<mean>[\d.]+) ± (?P<std>[\d.]+)(?: \(.*\))? \|$")


def method_table(results_md: Path) -> pd.DataFrame:
    """The rows of the table under "## Every method on the first version of the benchmark": method, mean, std."""
    section = results_md.read_text().split("## Every method on the first version of the benchmark", 1)[1].split("\n## ", 1)[0]
    rows = [m.groupdict() for m in map(ROW.match, section.splitlines()) if m]
    return pd.DataFrame(rows).astype({"mean": float, "std": float})


def main() -> None:
    fig = plots.miou_bars(method_table(HERE.parent / "results.md"))
    fig.axes[0].tick_params(axis="x", labelrotation=45)
    fig.set_size_inches(11, 4)
    fig.tight_layout()
    fig.savefig(HERE / "methods.png", dpi=110)


if __name__ == "__main__":
    main()
