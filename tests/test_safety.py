"""Nothing unsafe is loaded or overwritten: pickle weights, remote code, export targets, memory, bind address."""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path

import pytest
import tomllib
from reliability import REPO_ROOT, record, run_main
from tiny import make_corpus_file, make_tiny_model

from atp_viz.cli.main import build_parser
from atp_viz.experiment.workbench import Setup
from atp_viz.models import loading
from atp_viz.models.loading import ModelLoadError, load_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    return {"model": make_tiny_model(root / "tiny4"), "corpus": make_corpus_file(root / "corpus.txt"), "root": root}


class Payload:
    """Unpickling this creates ``marker``: stands in for code a stranger's checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_only_copy(src: Path, dest: Path, marker: Path) -> Path:
    """The tiny model with its safetensors weights replaced by a code-running pickle."""
    import shutil

    shutil.copytree(src, dest)
    (dest / "model.safetensors").unlink()
    with (dest / "pytorch_model.bin").open("wb") as handle:
        pickle.dump({"weights": Payload(marker)}, handle)
    return dest


def schedule_argv(model: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        "schedule",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        *extra,
    ]


def test_pickle_weights_refused_without_flag(assets, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = pickle_only_copy(assets["model"], tmp_path / "pickled", marker)
    code, _, stderr = run_main(schedule_argv(folder, assets["corpus"]))
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert code == 2 and len(errors) == 1, stderr
    assert "pickle" in errors[0] and "run code" in errors[0] and "--allow-pickle" in errors[0]
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="can run code"):
        load_model(str(folder))
    assert not marker.exists()
    record(
        "unsafe input",
        "model folder with only pickle weights (`pytorch_model.bin` that runs code), no flag",
        2,
        0,
        "exit 2: refused, says pickle can run code and names --allow-pickle; payload never ran",
    )


def test_pickle_flag_still_never_runs_a_payload(assets, tmp_path: Path) -> None:
    """With --allow-pickle the weights are read with torch's weights-only unpickler: no code runs."""
    marker = tmp_path / "pwned"
    folder = pickle_only_copy(assets["model"], tmp_path / "pickled", marker)
    code, _, stderr = run_main(schedule_argv(folder, assets["corpus"], "--allow-pickle"))
    assert not marker.exists()
    assert "Traceback" not in stderr
    assert code == 2 and len([ln for ln in stderr.splitlines() if "error:" in ln]) == 1, stderr
    record(
        "unsafe input",
        "code-running pickle with --allow-pickle",
        1,
        0,
        "payload never ran (weights-only unpickling); exit 2 with one line",
    )


def test_benign_pickle_loads_with_flag(assets, tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "benign"
    shutil.copytree(assets["model"], folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    code, out, stderr = run_main(schedule_argv(folder, assets["corpus"], "--allow-pickle", "--json"))
    assert code == 0, stderr
    assert '"layers": 4' in out


def remote_code_folder(root: Path, marker: Path) -> Path:
    folder = root / "remote-code"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "evil-tiny", "architectures": ["EvilForCausalLM"],'
        ' "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}}'
    )
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_trust_remote_code_is_off_unless_asked(assets, tmp_path: Path) -> None:
    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    assert Setup().trust_remote_code is False and Setup().allow_pickle is False
    for command in ("prune", "errors", "sweep", "compare"):
        args = build_parser().parse_args([command])
        assert args.trust_remote_code is False and args.allow_pickle is False
    # nowhere in the library or the dashboard is it switched on by a literal
    sources = [*(REPO_ROOT / "atp_viz").rglob("*.py"), *(REPO_ROOT / "pages").glob("*.py"), REPO_ROOT / "app.py"]
    for path in sources:
        if path.is_file():
            assert not re.search(r"trust_remote_code\s*=\s*True", path.read_text()), path
    marker = tmp_path / "pwned"
    folder = remote_code_folder(tmp_path, marker)
    code, _, stderr = run_main(schedule_argv(folder, assets["corpus"]))
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert not marker.exists()
    record(
        "unsafe input",
        "model folder whose config asks to run its own Python (`auto_map`), no flag",
        1,
        0,
        f"exit 2: `{errors[0].split('error: ', 1)[1][:90]}`; the code never ran",
    )


def test_export_refuses_non_empty_folder(assets, tmp_path: Path) -> None:
    target = tmp_path / "export"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    store = tmp_path / "store" / "results.sqlite"
    argv = [
        "prune",
        "--model",
        str(assets["model"]),
        "--corpus",
        str(assets["corpus"]),
        "--calib-samples",
        "4",
        "--seqlen",
        "32",
        "--eval-windows",
        "4",
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        "--store",
        str(store),
        "--save",
        str(target),
    ]
    code, _, stderr = run_main(argv)
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert code == 2 and len(errors) == 1 and "--force" in errors[0], stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "mine"
    assert not store.parent.exists()  # refused before anything was computed or stored
    code, _, stderr = run_main([*argv, "--force"])
    assert code == 0, stderr
    assert (target / "schedule.json").is_file() and (target / "model.safetensors").is_file()
    record(
        "unsafe input",
        "export into a non-empty folder without --force",
        1,
        0,
        "exit 2 naming --force; folder untouched, nothing computed",
    )


def test_dashboard_binds_localhost_only() -> None:
    config_path = REPO_ROOT / ".streamlit" / "config.toml"
    if not config_path.is_file():
        pytest.skip("no dashboard config yet")
    config = tomllib.loads(config_path.read_text())
    assert config["server"]["address"] == "127.0.0.1"
    for path in [*(REPO_ROOT / "scripts").glob("*"), REPO_ROOT / "app.py", *(REPO_ROOT / "pages").glob("*.py")]:
        if path.is_file():
            assert "0.0.0.0" not in path.read_text(errors="replace"), path
    record(
        "unsafe input",
        "dashboard bind address (.streamlit/config.toml, launch scripts)",
        1,
        0,
        "127.0.0.1 only; no 0.0.0.0 anywhere",
    )


# ------------------------------------------------------------------------------------ memory


def test_memory_check_refuses_before_loading(assets, tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(loading, "available_bytes", lambda device: 100_000)  # the tiny model needs ~0.4 MB
    loads = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(assets["model"]))
    message = str(info.value)
    assert "\n" not in message and "free" in message and "KiB" in message and loads == []
    store = tmp_path / "store" / "results.sqlite"
    argv = [
        "prune",
        "--model",
        str(assets["model"]),
        "--corpus",
        str(assets["corpus"]),
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        "--store",
        str(store),
        "--no-offload",  # without it the model streams from its files instead (tests/test_offload.py)
    ]
    code, _, stderr = run_main(argv)
    errors = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert code == 2 and len(errors) == 1 and "is free on cpu" in errors[0], stderr
    assert loads == [] and not store.parent.exists()
    record(
        "memory",
        "model larger than free memory, --no-offload (free memory faked to 100 kB)",
        2,
        0,
        f"refused before loading: `{errors[0].split('error: ', 1)[1][:100]}`",
    )


def test_memory_check_passes_when_it_fits(assets, monkeypatch) -> None:
    monkeypatch.setattr(loading, "available_bytes", lambda device: 1 << 40)
    assert load_model(str(assets["model"])).num_blocks == 4
