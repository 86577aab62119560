"""Measurements of a (pruned) model: the metric registry, perplexity, zero-shot accuracy, point results."""
