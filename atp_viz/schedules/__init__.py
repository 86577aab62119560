"""Per-block sparsity schedules: published formulas, own profiles, the method registry, the toy model (pure numpy)."""
