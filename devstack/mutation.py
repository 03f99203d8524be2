"""Per-module kill rates from the last ``mutmut run`` (``make mutate`` prints this table).

mutmut 3 keeps one verdict per mutant in ``mutants/<path>.meta`` (JSON, the
exit code of the test run against that mutant). This adds them up per module:

* ``killed`` — a unit test failed (or timed out) with the mutant in place;
* ``survived`` — every test that runs the mutated function still passed;
* ``no test`` — no unit test runs the mutated function at all;
* ``score`` — killed / (killed + survived + no test): a mutant no test reaches
  counts as surviving, since nothing would notice that change either.

Usage: ``python -m devstack.mutation [mutants folder]``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

# mutmut.stats.status_by_exit_code, reduced to what the table shows.
_VERDICTS = {1: "killed", 3: "killed", 0: "survived", 5: "no test", 33: "no test", 34: "skipped",
             36: "killed", 24: "killed", -24: "killed", 152: "killed", 255: "killed", 37: "killed",
             None: "not run"}
PURE_MODULES = ("filters", "replay", "batcher", "backoff", "records", "config", "ws_client")


def verdicts(mutants: Path) -> dict[str, Counter[str]]:
    """{module: Counter of verdicts} for every mutated module under ``mutants/logger``."""
    table: dict[str, Counter[str]] = {}
    for meta in sorted((mutants / "logger").glob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            table[meta.name.removesuffix(".py.meta")] = Counter(_VERDICTS.get(code, "suspicious")
                                                               for code in codes.values())
    return table


def score(counts: Counter[str]) -> float:
    judged = counts["killed"] + counts["survived"] + counts["no test"]
    return 100.0 * counts["killed"] / judged if judged else 0.0


def render(table: dict[str, Counter[str]]) -> str:
    columns = ("killed", "survived", "no test", "not run")
    lines = [f"{'module':<16}{'mutants':>8}" + "".join(f"{c:>10}" for c in columns) + f"{'score':>8}"]

    def row(name: str, counts: Counter[str]) -> str:
        return (f"{name:<16}{sum(counts.values()):>8}" + "".join(f"{counts[c]:>10}" for c in columns)
                + f"{score(counts):>7.1f}%")
    for module, counts in table.items():
        lines.append(row(module, counts))
    pure = sum((table[m] for m in PURE_MODULES if m in table), Counter())
    lines.append(row("pure modules", pure))
    lines.append(row("package", sum(table.values(), Counter())))
    return "\n".join(lines)


def main() -> None:
    mutants = Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    if not mutants.is_dir():
        sys.exit(f"no {mutants}/ folder: run `make mutate` first")
    print(render(verdicts(mutants)))


if __name__ == "__main__":
    main()
