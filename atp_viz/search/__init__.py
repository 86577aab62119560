"""Searching per-block rates: space, samplers and journal; studies on a workbench, the comparison with ATP."""
