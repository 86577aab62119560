"""Experiments: setup, workbench (schedule -> prune -> measure -> store), ledger, tables, executors, shipped results."""
