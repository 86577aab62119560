"""The ``atp-viz`` command (``atp_viz.cli.main:main``)."""
