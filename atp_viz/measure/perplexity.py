"""Perplexity on non-overlapping windows (paper protocol), batched, with a chunked loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from atp_viz.models.loading import base_model
from atp_viz.progress import Counter

# Tokens per chunk of the LM head: the full-vocabulary logits of a whole batch are never held.
LOSS_CHUNK_TOKENS = 256  # 256 x 49k-vocab fp32 logits = 50 MB (and as much for the log-softmax)


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None]:
    """(body, LM head, final-logit soft-cap or None) of a causal LM: hidden = body(ids), logits = head(hidden)."""
    head: nn.Module = model.get_output_embeddings()  # type: ignore[operator]
    return base_model(model), head, getattr(model.config, "final_logit_softcapping", None)


def head_logits(hidden: torch.Tensor, head: nn.Module, softcap: float | None) -> torch.Tensor:
    """float32 logits z = head(h), soft-capped as z = c * tanh(z / c) when the model has a cap c (Gemma)."""
    logits = head(hidden).float()
    if softcap:  # Gemma-style final logit soft-capping is part of the model's distribution
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def chunked_nll(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None) -> float:
    """Sum of next-token NLL over all positions; logits exist for LOSS_CHUNK_TOKENS tokens at a time."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    total = 0.0
    for start in range(0, hidden.shape[0], LOSS_CHUNK_TOKENS):
        logits = head_logits(hidden[start : start + LOSS_CHUNK_TOKENS], head, softcap)
        total += float(F.cross_entropy(logits, targets[start : start + LOSS_CHUNK_TOKENS], reduction="sum"))
    return total


def token_log_probs(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None
) -> torch.Tensor:
    """log p(target_t | h_t) = z_t[target_t] - logsumexp(z_t) for each of the N rows; (N, H), (N,) -> (N,) float32.

    Chunked like ``chunked_nll``: logits exist for LOSS_CHUNK_TOKENS rows at a time.
    """
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], LOSS_CHUNK_TOKENS):
        stop = start + LOSS_CHUNK_TOKENS
        log_probs = F.log_softmax(head_logits(hidden[start:stop], head, softcap), dim=-1)  # (chunk, V)
        out[start:stop] = log_probs.gather(1, targets[start:stop, None]).squeeze(1)
    return out


@torch.inference_mode()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, progress: Counter | None = None) -> float:
    """exp(mean next-token NLL over every predicted token of every window). windows: (N, T)."""
    device = next(model.parameters()).device
    body, head, softcap = lm_parts(model)
    nll, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        hidden = body(input_ids=batch, use_cache=False).last_hidden_state  # (B, T, H)
        nll += chunked_nll(hidden[:, :-1], batch[:, 1:], head, softcap)
        count += batch[:, 1:].numel()
        if progress:
            progress(min(start + batch_size, windows.shape[0]), windows.shape[0])
    mean = nll / count
    return math.exp(mean) if mean < 700 else math.inf
