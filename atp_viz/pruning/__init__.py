"""Pruning a model block by block: pruners, layer statistics, the sequential, cached and offloaded calibration modes."""
