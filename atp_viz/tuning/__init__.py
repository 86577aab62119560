"""Tuning ATP's beta: find-best (golden-section search), prediction without a sweep, 2-D sweeps."""
