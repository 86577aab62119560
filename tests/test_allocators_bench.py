"""bench/allocators_compare.sh and bench/allocators_table.py at a tiny size, as processes: the comparison of
docs/results.md is made by these two, so they must run and their table must select what it says it selects."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import shared_corpus_file, shared_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TINY = "--calib-samples 2 --seqlen 32 --eval-windows 1 --calibration cached"

pytestmark = pytest.mark.slow


def test_the_comparison_script_and_its_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "ATP_VIZ_CACHE": str(tmp_path / "cache"),
        "PYTHON": sys.executable,
        "MODELS": str(shared_tiny_model()),
        "CORPUS": str(shared_corpus_file()),
        "SPARSITIES": "0.6",
        "SEEDS": "0,1",
        "METRICS": "perplexity",
        "SIZE": f"{TINY} --find-best",
        "POWERS": "0.5 2",
        "DSA_SPARSITIES": "0.6",
        "SEARCH_SIZE": f"{TINY} --trials 3",
        "OUT": str(out),
        "STORE": str(tmp_path / "results.sqlite"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "allocators_compare.sh")], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model = Path(env["MODELS"]).name
    for variant in ("peers", "farms", "lsa-projection", "power-p0.5", "power-p2", "dsa-search-s0.6", "dsa-found-s0.6"):
        assert (out / f"{model}-{variant}.json").stat().st_size > 0, variant
    table = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "allocators_table.py"), str(out), "--json", str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
    )
    assert table.returncode == 0, table.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads((tmp_path / "t.json").read_text())["rows"]}
    assert rows["uniform"]["verdict"] == "reference" and rows["uniform"]["seeds"] == 2
    # the curved row is the p whose chosen point has the lower validation perplexity
    (curved,) = [row for name, row in rows.items() if name.startswith("ATP curved")]
    by_p = {
        p: json.loads((out / f"{model}-power-p{p}.json").read_text())["rows"][0]["validation_perplexity"]
        for p in ("0.5", "2")
    }
    assert curved["params"]["power"] == float(min(by_p, key=by_p.__getitem__))
    assert "best p of 0.5, 2" in curved["name"]
    # the graph DSA's search found is measured on both seeds, beside the one-seed search rows
    search = json.loads((out / f"{model}-dsa-search-s0.6.json").read_text())
    found = rows["DSA, the searched graph on every seed"]
    assert found["seeds"] == 2 and found["params"]["graph"] == search["best"]["graph"]
    assert math.isfinite(found["perplexity"]) and found["verdict"] != "one seed: no band"
    assert rows["DSA, graph searched (3 graphs)"]["verdict"] == "one seed: no band"
    assert f"| 0.6 | {found['name']} |" in table.stdout
    # SEARCHED: the found graph measured again from the earlier search's file, with no second search
    again = tmp_path / "again"
    rerun = {**env, "OUT": str(again), "SEARCHED": f"{tmp_path / 'none'} {out}", "VARIANTS": "", "POWERS": ""}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "allocators_compare.sh")], env=rerun, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in again.iterdir()] == [f"{model}-dsa-found-s0.6.json"] and "graph search" not in done.stderr
    (remeasured,) = json.loads((again / f"{model}-dsa-found-s0.6.json").read_text())["rows"]
    assert remeasured["params"]["graph"] == search["best"]["graph"]
    # runs in two folders make one table (the curved row still picks among both p), and a row twice is refused
    apart = tmp_path / "apart"
    apart.mkdir()
    (out / f"{model}-power-p2.json").rename(apart / f"{model}-power-p2.json")
    split = [sys.executable, str(ROOT / "bench" / "allocators_table.py"), str(out), str(apart)]
    joined = subprocess.run([*split, "--json", str(tmp_path / "j.json")], capture_output=True, text=True)
    assert joined.returncode == 0, joined.stderr[-3000:]
    rows_joined = {row["name"]: row for row in json.loads((tmp_path / "j.json").read_text())["rows"]}
    assert rows_joined.keys() == rows.keys() and rows_joined[curved["name"]]["params"] == curved["params"]
    twice = subprocess.run([*split, str(out)], capture_output=True, text=True)
    assert twice.returncode == 1 and f"uniform at S = 0.6 is in out/{model}-peers.json and out/" in twice.stderr


@pytest.mark.parametrize(
    ("variants", "code", "said"),
    [("", 0, "tables in"), ("bogus", 2, "unknown variant 'bogus' in VARIANTS; allowed: peers farms lsa-projection")],
)
def test_the_script_runs_only_the_variants_asked(tmp_path: Path, variants: str, code: int, said: str) -> None:
    """VARIANTS="" with POWERS="" runs nothing (how the power profiles and DSA's searches are added on their own);
    an unknown variant is refused in one line. PYTHON=false: any run the script started would exit 1."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": "false", "MODELS": "m", "VARIANTS": variants, "POWERS": "", "OUT": str(out)}
    env.pop("DSA_SPARSITIES", None)
    script = ROOT / "bench" / "allocators_compare.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == code and said in done.stderr, done.stderr
    assert list(out.iterdir()) == []


def test_a_search_missing_from_searched_is_refused_before_any_run(tmp_path: Path) -> None:
    """SEARCHED names folders of earlier DSA searches; a sparsity with none there is refused in one line and
    nothing runs (PYTHON=false: any run the script started would exit 1)."""
    out, searched = tmp_path / "out", tmp_path / "searched"
    searched.mkdir()
    (searched / "m-dsa-search-s0.7.json").write_text(json.dumps({"best": {"graph": "W:(NO_OP)-(VAR)-(EXP,EXP)"}}))
    env = {**os.environ, "PYTHON": "false", "MODELS": "m", "POWERS": "", "OUT": str(out)}
    env.update(DSA_SPARSITIES="0.7,0.6", SEARCHED=str(searched))
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "allocators_compare.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"no DSA search of m at S = 0.6 in SEARCHED ({searched}); allowed: a folder holding m-dsa-search-s0.6.json"
    )
    assert not out.exists()
