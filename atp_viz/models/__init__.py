"""Models and their text: loading, decoder-block structure, corpora and windows, hooks."""
