"""Pin every resolved package version into pyproject.toml.

uv.lock names the package registry's host, so it stays out of git; instead the exact
versions it resolved are written to ``[tool.uv] constraint-dependencies``, which makes a
fresh ``uv sync`` reproduce them. Run after changing dependencies: ``make pin``.
"""

import re
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
BLOCK = re.compile(r"constraint-dependencies = \[\n(?:    \"[^\"]*\",\n)*\]\n")


def resolved_pins() -> list[str]:
    """The exact versions installed by ``uv sync --all-groups`` in this environment."""
    subprocess.run(["uv", "sync", "--all-groups"], check=True)
    frozen = subprocess.run(
        ["uv", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    pins = [line.strip() for line in frozen.splitlines() if "==" in line]
    return sorted(set(pins), key=str.lower)


def main() -> None:
    pins = resolved_pins()
    block = "constraint-dependencies = [\n" + "".join(f'    "{pin}",\n' for pin in pins) + "]\n"
    text = PYPROJECT.read_text()
    if BLOCK.search(text):
        text = BLOCK.sub(block, text)
    else:
        text = text.replace("[tool.uv]\n", "[tool.uv]\n" + block, 1)
    PYPROJECT.write_text(text)
    sys.stdout.write(f"pinned {len(pins)} packages in {PYPROJECT.name}\n")


if __name__ == "__main__":
    main()
