"""The allocator comparison table (issue 23) from the JSON tables `bench/allocators_compare.sh` writes.

    python bench/allocators_table.py OUT_DIR [OUT_DIR ...] [--json docs/results/allocators_compare.json]

Reads ``<model>-peers.json``, ``<model>-farms.json``, ``<model>-lsa-projection.json`` and
``<model>-power-p<p>.json`` of each model in each OUT_DIR (whichever exist; several folders when runs at
different sparsities wrote their own; the same row in two of them is refused) and prints one markdown table
per model: perplexity on the evaluation split (mean +- standard deviation over the calibration seeds; each
method's parameter chosen on validation where it has a grid), the mean zero-shot accuracy over the
tasks (evaluation items, mean over seeds, +- its item standard error), and the verdicts against uniform at
the same sparsity. Perplexity: ``better`` / ``worse`` when the two seed bands (mean +- std) do not overlap,
``within the seed band`` when they do. Zero-shot: ``higher`` / ``lower`` only when the two accuracies differ
by more than twice the standard error of their difference, else ``within noise``. ATP's curved profile is
one row per sparsity: of the curvatures p run (in any of the folders), the one whose chosen point has the
lowest validation perplexity (mean over seeds), so the row is selected on validation like every other. DSA's
graph search (``<model>-dsa-search-s<S>.json``) gives two one-seed rows, its graph and ATP's grid at the same
budget, and the graph it found measured on every seed (``<model>-dsa-found-s<S>.json``) a row with a band.
Nothing here is measured; it only reads what the compare runs stored.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

# file suffix -> how its rows are named in the table (None: the registry label)
VARIANTS = {
    "peers": {"alphapruning": "AlphaPruning (official)", "lsa": "LSA (per block)", "atp": "ATP (best beta)"},
    "farms": {"alphapruning": "AlphaPruning (FARMS)"},
    "lsa-projection": {"lsa": "LSA (per projection)"},
}


def verdict(row: dict[str, Any], uniform: dict[str, Any]) -> str:
    """Lower perplexity is better; bands are mean +- std over seeds."""
    if row is uniform:
        return "reference"
    lo, hi = row["perplexity"] - row["perplexity_std"], row["perplexity"] + row["perplexity_std"]
    ulo, uhi = uniform["perplexity"] - uniform["perplexity_std"], uniform["perplexity"] + uniform["perplexity_std"]
    if row["seeds"] < 2 or uniform["seeds"] < 2:
        return "one seed: no band"
    if hi < ulo:
        return "better than uniform"
    if lo > uhi:
        return "worse than uniform"
    return "within uniform's seed band"


def zeroshot_verdict(row: dict[str, Any], uniform: dict[str, Any]) -> str:
    """Higher accuracy is better; noise is the items' standard error of the difference (unpaired, so
    conservative: every method answers the same items)."""
    if row is uniform:
        return "reference"
    a, b = row.get("zeroshot", math.nan), uniform.get("zeroshot", math.nan)
    if math.isnan(a) or math.isnan(b):
        return ""
    noise = 2 * math.hypot(row.get("zeroshot_stderr", math.nan), uniform.get("zeroshot_stderr", math.nan))
    if a - b > noise:
        return "higher"
    if b - a > noise:
        return "lower"
    return "within noise"


def where(path: Path) -> str:
    """A raw file as the table names it: its folder and name."""
    return f"{path.parent.name}/{path.name}"


def curved_rows(folders: list[Path], model: str) -> list[dict[str, Any]]:
    """Per sparsity, the power-profile row of the curvature p with the lowest validation perplexity."""
    tried: dict[float, list[tuple[float, dict[str, Any]]]] = {}
    for path in sorted(path for folder in folders for path in folder.glob(f"{model}-power-p*.json")):
        if not path.stat().st_size:  # still running
            continue
        for row in json.loads(path.read_text())["rows"]:
            if row["method"] == "power":
                tried.setdefault(row["sparsity"], []).append((row["params"]["power"], {**row, "file": where(path)}))
    out = []
    for found in tried.values():
        _, best = min(found, key=lambda pair: pair[1]["validation_perplexity"])
        powers = ", ".join(f"{p:g}" for p, _ in sorted(found, key=lambda pair: pair[0]))
        out.append({**best, "name": f"ATP curved (power profile, best p of {powers})"})
    return out


def rows_of(folders: list[Path], model: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    for folder in folders:
        found, first = folder_rows(folder, model)
        rows += found
        header = header or first
    rows += curved_rows(folders, model)
    seen: dict[tuple[float, str, str], str] = {}
    for row in rows:  # the same method at the same sparsity from two runs: which one to report is not ours to pick
        key = (row["sparsity"], row["name"], json.dumps(row["params"], sort_keys=True))
        if key in seen:
            raise SystemExit(f"{model}: {row['name']} at S = {row['sparsity']:g} is in {seen[key]} and {row['file']}")
        seen[key] = row["file"]
    return rows, header


def folder_rows(folder: Path, model: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of ``model``'s tables in ``folder`` (all but the power profiles, which ``curved_rows`` reads
    across folders) and the header (dense metrics, seeds) of its first table, {} when it has none."""
    rows: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    for suffix, names in VARIANTS.items():
        path = folder / f"{model}-{suffix}.json"
        if not path.exists() or not path.stat().st_size:  # not run, or still running
            continue
        table = json.loads(path.read_text())
        header = header or {"dense": table["dense_metrics"], "seeds": table["seeds"]}
        for row in table["rows"]:
            if suffix != "peers" and row["method"] == "uniform":
                continue
            rows.append({**row, "name": names.get(row["method"], row["label"]), "file": where(path)})
    for path in sorted(folder.glob(f"{model}-dsa-search-s*.json")):  # DSA's graph search beside ATP's grid
        found = json.loads(path.read_text()) if path.stat().st_size else None
        if not found:
            continue
        best, atp = found["best"], found["atp"]
        one = {"sparsity": found["sparsity"], "perplexity_std": math.nan, "seeds": 1, "file": where(path)}
        rows.append({**one, "method": "dsa-search", "name": f"DSA, graph searched ({found['budget']} graphs)",
                     "perplexity": best["evaluation_perplexity"], "params": {"graph": best["graph"]},
                     "rates": best["rates"]})  # fmt: skip
        rows.append({**one, "method": "atp-search", "name": f"ATP, the same search's grid ({atp['points']} points)",
                     "perplexity": atp["evaluation_perplexity"], "params": {"beta": atp["params"]["beta"]},
                     "rates": []})  # fmt: skip
    for path in sorted(folder.glob(f"{model}-dsa-found-s*.json")):  # the graph it found, measured on every seed
        if path.stat().st_size:
            rows += [{**row, "name": "DSA, the searched graph on every seed", "file": where(path)}
                     for row in json.loads(path.read_text())["rows"] if row["method"] == "dsa"]  # fmt: skip
    return rows, header


def table(model: str, rows: list[dict[str, Any]], header: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    dense = header["dense"]
    lines = [
        f"**{model}** (dense: perplexity {dense['evaluation/perplexity']:.2f}"
        + (f", zero-shot {100 * dense['evaluation/zeroshot']:.1f} %" if "evaluation/zeroshot" in dense else "")
        + f"; seeds {', '.join(map(str, header['seeds']))})",
        "",
        "| S | method | perplexity (mean ± std over seeds) | against uniform | zero-shot acc. % (± stderr) "
        "| zero-shot vs uniform | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    out = []
    for s in sorted({r["sparsity"] for r in rows}):
        here = [r for r in rows if r["sparsity"] == s]
        uniform = next((r for r in here if r["method"] == "uniform"), None)
        for r in sorted(here, key=lambda r: r["perplexity"]):
            said = verdict(r, uniform) if uniform else "no uniform row"
            said_zs = zeroshot_verdict(r, uniform) if uniform else ""
            zs = r.get("zeroshot", math.nan)
            band = "" if r["seeds"] < 2 else f" ± {r['perplexity_std']:.1f}"
            zs_text = "" if math.isnan(zs) else f"{100 * zs:.1f} ± {100 * r.get('zeroshot_stderr', math.nan):.1f}"
            chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in r["params"].items())
            removed = [i for i, rate in enumerate(r["rates"]) if rate >= 1.0]
            if removed:
                chosen += f"; removes block{'s' if len(removed) > 1 else ''} {', '.join(map(str, removed))}"
            lines.append(
                f"| {s:g} | {r['name']} | {r['perplexity']:.1f}{band} | {said} | {zs_text} | {said_zs} "
                f"| {chosen or '-'} |"
            )
            out.append({"model": model, "sparsity": s, "method": r["method"], "name": r["name"],
                        "perplexity": r["perplexity"], "perplexity_std": r["perplexity_std"], "seeds": r["seeds"],
                        "zeroshot": zs, "zeroshot_stderr": r.get("zeroshot_stderr", math.nan),
                        "params": r["params"], "removed_blocks": removed, "verdict": said,
                        "zeroshot_verdict": said_zs, "file": r["file"]})  # fmt: skip
    return "\n".join(lines), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    models = sorted({p.name.rsplit("-", 1)[0] for folder in args.folders for p in folder.glob("*-peers.json")})
    if not models:
        raise SystemExit(f"no <model>-peers.json in {', '.join(map(str, args.folders))}")
    everything = []
    for model in models:
        text, rows = table(model, *rows_of(args.folders, model))
        print(text + "\n")
        everything += rows
    if args.json:
        folders = [str(folder) for folder in args.folders]
        args.json.write_text(json.dumps({"folders": folders, "rows": everything}, indent=1) + "\n")


if __name__ == "__main__":
    main()
