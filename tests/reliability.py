"""Shared pieces of the reliability tests: the report collector, CLI runners and a tiny GGUF file.

Every fault or bad-input test calls ``record(...)`` with what it injected, how many times, and how
many finished results were lost. With ``ATP_VIZ_WRITE_RELIABILITY=1`` the table in
``docs/reliability.md`` is updated with those rows when the test session ends (a session
finaliser in ``conftest.py``; rows of cases not run are kept), so any subset regenerates its rows::

    ATP_VIZ_WRITE_RELIABILITY=1 .venv/bin/python -m pytest tests/test_faults.py tests/test_bad_input.py \
        tests/test_safety.py tests/test_dashboard_faults.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
REPORT = REPO_ROOT / "docs" / "reliability.md"
TMP_PATH = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/ ]+/")  # keeps the report stable between runs
AREAS = ("interruption", "concurrency", "damaged state", "bad input", "unsafe input", "memory")


@dataclass(frozen=True)
class Row:
    area: str
    case: str  # the fault injected or the input tried
    times: int  # how many times the test did it
    lost: int  # finished results lost (bad input: files written); must be 0
    outcome: str  # what the user saw


_ROWS: dict[tuple[str, str], Row] = {}


def record(area: str, case: str, times: int, lost: int, outcome: str) -> None:
    """Add one table row (a repeated case adds up its times and losses)."""
    assert area in AREAS, area
    old = _ROWS.get((area, case))
    if old is not None:
        times, lost = old.times + times, old.lost + lost
    outcome = TMP_PATH.sub("<tmp>/", outcome).replace("|", "/").replace("\n", " ")
    _ROWS[(area, case)] = Row(area, case, times, lost, outcome)


def stored_rows() -> dict[tuple[str, str], Row]:
    """The rows docs/reliability.md holds now (empty when it has no table)."""
    if not REPORT.is_file():
        return {}
    rows = {}
    for line in REPORT.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and cells[0] in AREAS and cells[2].isdigit() and cells[3].isdigit():
            rows[(cells[0], cells[1])] = Row(cells[0], cells[1], int(cells[2]), int(cells[3]), cells[4])
    return rows


def write_report() -> None:
    """Merge the rows recorded in this process into docs/reliability.md (only with the env var set).

    Rows of cases this run did not reach are kept, so a run with ``-k`` or ``-n`` (each xdist worker
    merges its own rows under a file lock) updates its rows without dropping the others.
    """
    if os.environ.get("ATP_VIZ_WRITE_RELIABILITY") != "1" or not _ROWS:
        return
    import fcntl

    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_merged({**stored_rows(), **_ROWS})


def write_merged(merged: dict[tuple[str, str], Row]) -> None:
    rows = sorted(merged.values(), key=lambda r: (AREAS.index(r.area), r.case))
    lines = [
        "# Reliability",
        "",
        "Produced by the test suite (`tests/test_faults.py`, `tests/test_bad_input.py`, `tests/test_safety.py`,",
        "`tests/test_dashboard_faults.py`); regenerate with",
        "",
        "```",
        "ATP_VIZ_WRITE_RELIABILITY=1 .venv/bin/python -m pytest tests/test_faults.py tests/test_bad_input.py "
        "tests/test_safety.py tests/test_dashboard_faults.py",
        "```",
        "",
        "Fault tests run real `python -m atp_viz` processes on tiny random models (SIGKILL, concurrent",
        "writers, damaged files); bad-input rows run `atp_viz.cli.main.main` in-process and the Python API.",
        "`dashboard:` rows drive the Streamlit pages: AppTest for every control, a real `streamlit run`",
        "server with headless Chromium for the closed tab, an audit hook on file opens for the paths.",
        "*Lost* counts finished results missing afterwards (for bad input: files written); every test",
        "asserts it is 0. *Times* counts injections (hypothesis rows: generated examples).",
        "",
        "| area | fault injected / input tried | times | lost | what the user sees |",
        "|---|---|---:|---:|---|",
    ]
    lines += [f"| {r.area} | {r.case} | {r.times} | {r.lost} | {r.outcome} |" for r in rows]
    total_times = sum(r.times for r in rows)
    total_lost = sum(r.lost for r in rows)
    lines += ["", f"Total: {len(rows)} cases, {total_times} injections, {total_lost} results lost.", ""]
    kept = kept_sections()
    REPORT.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


def kept_sections() -> str:
    """Hand-written sections after the generated table (from the first '## ' heading after it): kept."""
    if not REPORT.is_file():
        return ""
    text = REPORT.read_text()
    table_end = text.find("\nTotal: ")
    start = text.find("\n## ", table_end) if table_end >= 0 else -1
    return "" if start < 0 else text[start + 1 :]


# ----------------------------------------------------------------------------- running the CLI


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def cli_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "atp_viz", *args]


def run_cli(args: Sequence[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m atp_viz ARGS`` as a real process."""
    return subprocess.run(
        cli_command(args), capture_output=True, text=True, timeout=timeout, env=cli_env(**env), cwd=REPO_ROOT
    )


def run_main(args: Sequence[str]) -> tuple[int, str, str]:
    """Run ``atp_viz.cli.main.main(ARGS)`` in this process: (exit code, stdout, stderr)."""
    from atp_viz.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors exit from inside parse_args
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def message_lines(stderr: str) -> list[str]:
    """Lines of stderr that are messages (error/warning), not progress bars or progress logs."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in stderr.splitlines()]
    return [line for line in lines if "error:" in line or "warning" in line.lower() or "Traceback" in line]


def sweep_args(model: Path, corpus: Path, store: Path, sparsity: float = 0.5, step: float = 0.02) -> list[str]:
    return [
        "sweep", "--model", str(model), "--corpus", str(corpus), "--calib-samples", "4", "--seqlen", "32",
        "--eval-windows", "4", "--sparsity", str(sparsity), "--step", str(step), "--store", str(store), "--json",
    ]  # fmt: skip


def point_rows(store_path: Path) -> dict[str, dict]:
    """key -> record of every finished point in a store (read with plain sqlite3, no recovery), with
    ``perplexity`` (evaluation split) taken from its metric row."""
    import sqlite3

    con = sqlite3.connect(store_path)
    try:
        rows = con.execute("SELECT key, record FROM results WHERE kind='point'").fetchall()
        metrics = con.execute("SELECT config, record FROM results WHERE kind='metric'").fetchall()
    finally:
        con.close()
    evaluation = {}
    for config_text, record_text in metrics:
        config = json.loads(config_text)
        if config["metric"] == "perplexity" and config["split"] == "evaluation":
            evaluation[config["point"]] = json.loads(record_text)["values"]["perplexity"]
    return {key: {**json.loads(record), "perplexity": evaluation[key]} for key, record in rows}


def dense_rows(store_path: Path) -> int:
    """How many metric rows belong to the dense model (one per metric and split)."""
    import sqlite3

    con = sqlite3.connect(store_path)
    try:
        configs = [json.loads(c) for (c,) in con.execute("SELECT config FROM results WHERE kind='metric'")]
    finally:
        con.close()
    return sum(1 for c in configs if c.get("method") == "dense")


def integrity(store_path: Path) -> str:
    import sqlite3

    con = sqlite3.connect(store_path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# ----------------------------------------------------------------------------- a tiny GGUF file


def make_tiny_gguf(path: Path, layers: int = 4) -> Path:
    """A float32 LLaMA GGUF written from ``tests/tiny.py``'s random model and BPE tokenizer."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from tiny import make_tiny_model

    src = make_tiny_model(path.parent / f"{path.stem}-hf", layers=layers)
    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg["vocab_size"])
    vocab = tok["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([1] * len(vocab))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_block = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    }  # fmt: skip
    for name, tensor in load_file(str(src / "model.safetensors")).items():
        if name not in top:
            parts = name.split(".")  # model.layers.<i>.<module...>.weight
            top[name] = f"blk.{parts[2]}.{per_block['.'.join(parts[3:-1])]}.weight"
        writer.add_tensor(top[name], np.ascontiguousarray(tensor.astype(np.float32)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
