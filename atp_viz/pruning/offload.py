"""Models larger than one device: weights stay in their safetensors files, one decoder block at a time
sits on the compute device.

The model is built on PyTorch's ``meta`` device (shapes, no storage). Only the parts outside the
decoder blocks (embeddings, final norm, LM head, rotary tables) are materialised on the device. The
blocks are wrapped in ``StreamedBlocks``: indexing it gives a block without weights (enough for its
call signature and shapes), iterating it loads block i's dense weights from the memory-mapped files
onto the device, yields it, runs the registered ``after`` steps on it (evaluation of the pruned
block), and drops its weights before block i + 1 is loaded. The existing loops, which all read
``for i, block in enumerate(blocks)``, therefore stream without a change:

- calibration and pruning: ``calibration.prune_sequential`` (sequential mode) and
  ``cached.collect_dense_stats`` / ``prune_cached`` (cached mode);
- evaluation: during the same pass, each pruned block is run over the activations of every
  evaluation window (all windows held between blocks, as the Wanda / ATP code does for 70B), and
  ``evaluate.perplexity`` then applies the final norm and LM head with every block replaced by the
  stored result (``hooks.recording_blocks``).

The dense weights are never copied: they are re-read from the files at every pass, so restoring
them costs nothing. Sequential mode's dense trajectory (the cumulative-error reference) goes to
host memory when the device is a GPU, and to a folder on disk when the device is the CPU; when it
fits neither it is recomputed at every point (one more block forward per block).

Memory on the device: non-block weights + one block and its pruning temporaries + the activations
(calibration batch and evaluation windows). ``check_budget`` refuses a setting that does not fit
before anything is loaded or written.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableSequence, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from atp_viz.errors import first_line
from atp_viz.measure.perplexity import perplexity
from atp_viz.models.hooks import recording_blocks
from atp_viz.models.loading import (
    LoadedModel,
    ModelLoadError,
    available_bytes,
    check_weights,
    find_blocks,
    human_bytes,
    is_causal_lm,
    resolve_device,
    resolve_source,
    torch_dtype,
    weights_fingerprint,
)
from atp_viz.progress import Counter
from atp_viz.pruning.calibration import (
    BlockCalls,
    CalibrationMode,
    DenseTrajectory,
    PruneReport,
    capture_block_calls,
    run_block,
)
from atp_viz.schedules.published import RateMap

# A block on the device also needs room for its pruning temporaries: scores and masks of a linear
# (Wanda), or a Hessian and its inverse per linear (SparseGPT), taken as one more copy of the block.
BLOCK_WORK_FACTOR = 2.0
# Calibration activations alive at once in the sequential loop: pruned input, dense input, the
# dense-weight reference output, the pruned output.
CALIBRATION_COPIES = 4
# Evaluation activations per split: the block-0 input (kept for the next point) and the current ones.
EVALUATION_COPIES = 2
# Of the free host memory, the share the dense trajectory may take before it goes to disk or is dropped.
HOST_SHARE = 0.5

BlockSource = Callable[[int, nn.Module, torch.device], dict[str, torch.Tensor]]


# -- weights in their files ------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFiles:
    """Which safetensors file holds each tensor of a model folder (read from the headers only)."""

    folder: Path
    where: dict[str, Path]
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def scan(cls, folder: Path) -> WeightFiles:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"--offload reads safetensors files; {folder} has none (convert the weights first)")
        where: dict[str, Path] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    where[key] = path
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        return cls(folder, where, shapes)

    def numel(self, names: Sequence[str]) -> int:
        return sum(math.prod(self.shapes.get(name, ())) for name in names)

    def check_names(self, names: Sequence[str]) -> None:
        """Every named tensor is in the files (checked before a pass, not half-way through one)."""
        missing = [name for name in names if name not in self.where]
        if missing:
            raise ModelLoadError(
                f"--offload reads weights by name and {self.folder} lacks {missing[0]} (the checkpoint's names differ "
                "from the model's); run without --offload"
            )

    def read(self, wanted: Mapping[str, torch.dtype], device: torch.device) -> dict[str, torch.Tensor]:
        """The named tensors, each in its dtype, on ``device`` (read through a memory map, file by file)."""
        from safetensors import safe_open

        self.check_names(list(wanted))
        out: dict[str, torch.Tensor] = {}
        for path in sorted({self.where[name] for name in wanted}):
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                for name, dtype in wanted.items():
                    if self.where[name] == path:
                        out[name] = handle.get_tensor(name).to(dtype)
        return out


def state_dtypes(module: nn.Module, prefix: str = "") -> dict[str, torch.dtype]:
    """Name -> dtype of every parameter and persistent buffer (the skeleton's dtypes are the model's)."""
    return {f"{prefix}{name}": tensor.dtype for name, tensor in module.state_dict(keep_vars=True).items()}


def file_source(files: WeightFiles, prefix: str) -> BlockSource:
    """Block i's dense tensors, read from the files (``prefix``: the dotted path of the block list)."""

    def read(index: int, block: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        inner = f"{prefix}.{index}."
        tensors = files.read(state_dtypes(block, inner), device)
        return {name.removeprefix(inner): tensor for name, tensor in tensors.items()}

    return read


# -- the streamed block list -----------------------------------------------------------------------
class StreamedBlocks(nn.ModuleList):
    """Decoder blocks whose weights live elsewhere; iterating streams them through the device.

    ``blocks[i]`` is block i without weights (meta tensors). ``for block in blocks`` loads block i
    from ``source`` onto ``device``, yields it, runs each ``after`` step as ``step(i, block)`` once the
    loop body is done with it, then drops its weights. A loop left early drops them too.
    """

    def __init__(self, blocks: Sequence[nn.Module], source: BlockSource, device: torch.device) -> None:
        super().__init__(blocks)
        self.source, self.device = source, device
        self.after: list[Callable[[int, nn.Module], None]] = []
        for index, block in enumerate(blocks):
            computed = [n for n, _ in block.named_buffers() if n.split(".")[-1] in non_persistent(block, n)]
            if computed:
                raise ModelLoadError(
                    f"--offload cannot stream {type(block).__name__}: block {index} holds computed buffers "
                    f"({', '.join(computed)}); run without --offload"
                )

    def __iter__(self) -> Iterator[nn.Module]:
        for index in range(len(self)):
            block = self[index]
            self.load(index)
            try:
                yield block
                for step in list(self.after):
                    step(index, block)
            finally:
                release(block)

    def load(self, index: int) -> None:
        block = self[index]
        with torch.inference_mode(False), torch.no_grad():
            block.load_state_dict(self.source(index, block, self.device), strict=True, assign=True)
        block.requires_grad_(False)

    @overload
    def __getitem__(self, idx: slice) -> nn.ModuleList: ...
    @overload
    def __getitem__(self, idx: int) -> nn.Module: ...
    def __getitem__(self, idx: int | slice) -> nn.Module | nn.ModuleList:
        """Block ``idx`` as it is now (without weights outside a streamed loop); a slice is a plain list."""
        if isinstance(idx, slice):
            return nn.ModuleList(list(self._modules.values())[idx])
        return super().__getitem__(idx)


def non_persistent(module: nn.Module, dotted: str) -> set[str]:
    owner = module.get_submodule(dotted.rpartition(".")[0]) if "." in dotted else module
    return set(getattr(owner, "_non_persistent_buffers_set", set()))


def release(block: nn.Module) -> None:
    """Drop a block's weights (back to shapes only)."""
    block.to_empty(device="meta")


# -- loading an offloaded model --------------------------------------------------------------------
@dataclass
class OffloadedModel(LoadedModel):
    """A model whose decoder blocks stream through the device (``streamed``); ``blocks`` has no weights."""

    streamed: StreamedBlocks = field(default_factory=lambda: StreamedBlocks([], lambda *_: {}, torch.device("cpu")))
    block_bytes: int = 0  # the largest block in the model's dtype
    resident_bytes: int = 0  # everything outside the blocks


def skeleton(config: Any, dtype: torch.dtype, trust_remote_code: bool = False) -> tuple[nn.Module, nn.ModuleList, str]:
    """The model on the meta device: (model, its decoder block list, the list's dotted path)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval().requires_grad_(False)
    blocks = find_blocks(model)
    prefix = next(name for name, module in model.named_modules() if module is blocks)
    return model, blocks, prefix


def materialize_rest(
    model: nn.Module,
    prefix: str,
    device: torch.device,
    read: Callable[[Mapping[str, torch.dtype]], dict[str, torch.Tensor]],
) -> None:
    """Load every tensor outside the decoder blocks onto ``device``; recompute computed buffers (rotary
    tables) as ``from_pretrained`` does; tie the LM head to the embeddings when the config says so."""
    outside = {n: d for n, d in state_dtypes(model).items() if not n.startswith(f"{prefix}.")}
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    with torch.inference_mode(False), torch.no_grad():
        for name, module in model.named_modules():
            inside = name == prefix or name.startswith(f"{prefix}.")
            if inside or not getattr(module, "_non_persistent_buffers_set", None):
                continue
            module.to_empty(device=device, recurse=False)
            init_weights: Callable[[nn.Module], None] = getattr(model, "_init_weights")
            init_weights(module)  # what from_pretrained runs on the rotary tables
        model.load_state_dict(read({n: d for n, d in outside.items() if n not in tied}), strict=False, assign=True)
        model.tie_weights()  # type: ignore[operator]
    tensors = [*model.named_parameters(), *model.named_buffers()]
    left = [n for n, t in tensors if t.is_meta and not n.startswith(f"{prefix}.")]
    if left:
        raise ModelLoadError(f"--offload found no weight {left[0]} in the model's files; run without --offload")


def check_budget(parts: Mapping[str, int], device: torch.device, have: int | None = None) -> None:
    """Refuse a setting whose one-block-at-a-time peak does not fit ``device`` (one line, nothing loaded)."""
    need = sum(parts.values())
    have = available_bytes(device) if have is None else have
    if need > have:
        detail = ", ".join(f"{name} {human_bytes(size)}" for name, size in parts.items())
        raise ValueError(
            f"the model does not fit {device} even with --offload: one block at a time needs about {human_bytes(need)} "
            f"({detail}) but {human_bytes(have)} is free; use --dtype bfloat16, fewer --calib-samples or eval "
            "windows, or a larger device"
        )


def offload_parts(files: WeightFiles, model: nn.Module, prefix: str, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes outside the blocks, bytes of the largest block) in ``dtype``, from the file headers."""
    size = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    names = list(state_dtypes(model))
    outside = files.numel([n for n in names if not n.startswith(f"{prefix}.")])
    blocks = find_blocks(model)
    largest = max(files.numel([f"{prefix}.{i}.{n}" for n in state_dtypes(b)]) for i, b in enumerate(blocks))
    return outside * size, largest * size


def load_offloaded(
    name: str,
    device: str = "cpu",
    dtype: str = "float32",
    activation_tokens: int = 0,
    *,
    trust_remote_code: bool = False,
    progress: Callable[[str], None] | None = None,
) -> OffloadedModel:
    """A causal LM whose blocks stay in their safetensors files, its budget checked first.

    ``activation_tokens``: hidden vectors held on the device at once (calibration tokens times
    ``CALIBRATION_COPIES`` plus evaluation tokens times ``EVALUATION_COPIES``), counted with the
    weights before any load."""
    from transformers import AutoConfig, AutoTokenizer

    torch_device, torch_dt = resolve_device(device), torch_dtype(dtype)
    source = resolve_source(name, progress)
    if not isinstance(source, Path):
        raise ModelLoadError(f"--offload reads a local safetensors folder; {name} is a hub id (download it first)")
    check_weights(source, allow_pickle=False)
    files = WeightFiles.scan(source)
    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the config of {name}: {first_line(exc)}") from None
    if not is_causal_lm(config):
        raise ModelLoadError(f"{name} is a {config.model_type!r} model without a causal-LM head")
    model, blocks, prefix = skeleton(config, torch_dt, trust_remote_code)
    files.check_names([name for name in state_dtypes(model) if name.startswith(f"{prefix}.")])
    resident, block = offload_parts(files, model, prefix, torch_dt)
    parts = {"outside the blocks": resident, "one block": int(block * BLOCK_WORK_FACTOR)}
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    activations = activation_tokens * hidden * (torch.finfo(torch_dt).bits // 8)
    check_budget(parts | {"activations": activations}, torch_device)
    if progress:
        progress(f"loading {name} with --offload (blocks stay in {source})")
    materialize_rest(model, prefix, torch_device, lambda wanted: files.read(wanted, torch_device))
    streamed = StreamedBlocks(list(blocks), file_source(files, prefix), torch_device)
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    return OffloadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        blocks=blocks,
        fingerprint=weights_fingerprint(source),
        source=str(source),
        device=torch_device,
        dtype=torch_dt,
        streamed=streamed,
        block_bytes=block,
        resident_bytes=resident,
    )


# -- the Workbench's parts with offload ------------------------------------------------------------
class FileWeights:
    """The dense weights of an offloaded model: re-read from the files at every pass, never copied.

    ``restore`` copies nothing; it starts a new ``version`` of the model's state, so results of a pass
    over an earlier (pruned) state are not taken for the current one.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        if not isinstance(loaded, OffloadedModel):
            raise ValueError("offloaded weights need a model loaded with --offload")
        self.blocks: StreamedBlocks = loaded.streamed
        self.version = 0

    def restore(self, block: int | None = None) -> None:
        """A new version of the dense state (of every block: they are all re-read at the next pass)."""
        self.version += 1


class StreamedPerplexity:
    """Perplexity of an offloaded model, measured block by block over all windows of a split.

    During a prune pass (``tracking``), each pruned block is run over every window's activations
    before its weights are dropped; ``perplexity`` then adds the final norm and LM head. Without a
    prune pass since the last restore, ``perplexity`` streams the dense blocks once for every split.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        weights: FileWeights,
        windows: Mapping[str, torch.Tensor],
        splits: Sequence[str],
        batch_size: int,
    ) -> None:
        self.loaded, self.weights, self.windows, self.splits = loaded, weights, windows, tuple(splits)
        self.batch_size = batch_size
        self.pending: tuple[str, ...] = ()  # splits a prune pass measures (set by the Workbench per point)
        self._calls: dict[str, BlockCalls] = {}
        self._final: dict[str, torch.Tensor] = {}
        self._final_version = self._pruned_version = -1

    def calls(self, split: str) -> BlockCalls:
        if split not in self._calls:
            self._calls[split] = capture_block_calls(
                self.loaded.model, self.loaded.blocks, self.windows[split], self.batch_size
            )
        return self._calls[split]

    @contextmanager
    def tracking(self, splits: Sequence[str] | None = None, pruned: bool = True) -> Iterator[None]:
        """Inside: every block the streamed loop finishes is also run over ``splits``' windows."""
        splits = tuple(self.pending if splits is None else splits)
        self._final = {}  # the last pass's activations go before this pass makes its own
        hidden = {split: self.calls(split).hidden for split in splits}

        def step(index: int, block: nn.Module) -> None:
            with torch.inference_mode():
                for split in splits:
                    hidden[split] = run_block(block, hidden[split], self.calls(split).args[index], self.batch_size)

        self.weights.blocks.after.append(step)
        try:
            yield
        finally:
            self.weights.blocks.after.remove(step)
        self._final, self._final_version = hidden, self.weights.version
        if pruned:
            self._pruned_version = self.weights.version

    def perplexity(self, split: str, progress: Counter | None = None) -> float:
        version = self.weights.version
        if not (self._final_version == version and split in self._final):
            if self._pruned_version == version:
                raise ValueError(f"the {split} split was not measured during the last offloaded prune pass")
            with self.tracking(self.splits, pruned=False):
                for done, _ in enumerate(self.weights.blocks, 1):
                    if progress:  # the dense pass: blocks done, then the windows through the LM head
                        progress(done, len(self.weights.blocks))
        parts = iter(self._final[split].split(self.batch_size))

        def replay(index: int, *_: object) -> torch.Tensor | None:
            return next(parts) if index == 0 else None

        with recording_blocks(self.loaded.blocks, replay):
            return perplexity(self.loaded.model, self.windows[split], self.batch_size, progress)


class SpilledOutputs(MutableSequence[torch.Tensor | None]):
    """One tensor per block kept in host memory (``folder`` None) or as files in ``folder``, read back
    onto the device it came from. They take at most ``HOST_SHARE`` of the host memory (or disk) free
    when the first one arrives; a tensor past that is dropped and recomputed at the next point."""

    def __init__(self, num_blocks: int, folder: Path | None) -> None:
        self.folder = folder
        self.host: list[torch.Tensor | None] = [None] * num_blocks
        self.kept = [False] * num_blocks
        self.device = torch.device("cpu")
        self.capacity: int | None = None
        self.used = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            weakref.finalize(self, shutil.rmtree, folder, True)

    def free(self) -> int:
        return available_bytes(torch.device("cpu")) if self.folder is None else shutil.disk_usage(self.folder).free

    def __len__(self) -> int:
        return len(self.kept)

    @overload
    def __getitem__(self, index: int) -> torch.Tensor | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[torch.Tensor | None]: ...
    def __getitem__(self, index: int | slice) -> torch.Tensor | None | list[torch.Tensor | None]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not self.kept[index]:
            return None
        if self.folder is None:
            tensor = self.host[index]
            return None if tensor is None else tensor.to(self.device)
        from safetensors.torch import load_file

        return load_file(str(self.folder / f"{index}.safetensors"), device=str(self.device))["h"]

    def __setitem__(self, index: Any, value: Any) -> None:
        if value is None or self.kept[index]:
            return
        if self.capacity is None:
            self.capacity = int(self.free() * HOST_SHARE)
        size = value.numel() * value.element_size()
        if self.used + size > self.capacity:
            return
        self.used += size
        self.device = value.device
        if self.folder is None:
            self.host[index] = value.to("cpu")
        else:
            from safetensors.torch import save_file

            save_file({"h": value.contiguous().cpu()}, str(self.folder / f"{index}.safetensors"))
        self.kept[index] = True

    def __delitem__(self, index: Any) -> None:
        raise TypeError("the dense trajectory has one entry per block")

    def insert(self, index: int, value: torch.Tensor | None) -> None:
        raise TypeError("the dense trajectory has one entry per block")


def spilled_trajectory(num_blocks: int, device: torch.device) -> DenseTrajectory:
    """Sequential mode's dense trajectory off the device: in host memory for a GPU, on disk for the CPU
    (where host memory is the device); as much of it as fits, the rest recomputed per point."""
    from atp_viz.models.loading import cache_dir

    if device.type != "cpu":
        return DenseTrajectory(SpilledOutputs(num_blocks, None))
    root = cache_dir() / "offload"
    root.mkdir(parents=True, exist_ok=True)
    return DenseTrajectory(SpilledOutputs(num_blocks, Path(tempfile.mkdtemp(dir=root, prefix="trajectory-"))))


class StreamedMode:
    """A calibration mode over streamed blocks: what needs a pass of its own runs first (``prepare``), then
    the prune pass also runs each pruned block over the evaluation windows (``StreamedPerplexity.tracking``)."""

    def __init__(self, mode: CalibrationMode, evaluation: StreamedPerplexity) -> None:
        self.mode, self.evaluation = mode, evaluation
        self.measures_errors = mode.measures_errors

    def prepare(self) -> None:
        self.mode.prepare()

    def prune(self, rates: RateMap, progress: Counter | None = None) -> PruneReport:
        self.mode.prepare()
        with self.evaluation.tracking():
            return self.mode.prune(rates, progress)
