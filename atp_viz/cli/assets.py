"""``atp-viz models | corpora``: the named models and corpora, and whether they are installed."""

from __future__ import annotations

import argparse
from typing import Any

from atp_viz.cli.options import json_option
from atp_viz.models.data import DEFAULT_CORPUS, HUB_CORPORA
from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS


def add_parsers(sub: Any) -> None:
    sub.add_parser("models", help="named models and whether they are installed", parents=[json_option()])
    sub.add_parser("corpora", help="available corpora", parents=[json_option()])


def cmd_models(_args: argparse.Namespace) -> dict[str, Any]:
    from atp_viz.models.loading import EmbeddedModel, package_dir

    def installed(entry: EmbeddedModel) -> bool:
        return all(package_dir(p) is not None for p in entry.packages)

    return {
        "models": [
            {"name": name, "installed": installed(e), "install": e.pip, "default": name == DEFAULT_MODEL}
            for name, e in EMBEDDED_MODELS.items()
        ]
    }


def cmd_corpora(_args: argparse.Namespace) -> dict[str, Any]:
    from atp_viz.models.data import WIKI_PACKAGE
    from atp_viz.models.loading import package_dir

    return {
        "corpora": [
            {
                "name": DEFAULT_CORPUS,
                "installed": package_dir(WIKI_PACKAGE) is not None,
                "source": "embedded Wikipedia lead extracts (CC BY-SA 4.0)",
                "default": True,
            },
            *(
                {
                    "name": name,
                    "installed": None,
                    "source": f"hub dataset {spec.path} (needs the hub, or {name}:/local/dir)",
                    "default": False,
                }
                for name, spec in HUB_CORPORA.items()
            ),
            {
                "name": "PATH.txt|.json|.jsonl|.parquet",
                "installed": None,
                "source": "a local file ('text' field for json/parquet)",
                "default": False,
            },
        ]
    }


COMMANDS = {"models": cmd_models, "corpora": cmd_corpora}
