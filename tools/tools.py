"""What lets every tool run as `python tools/x.py` as well as `python -m tools.x`, with one import line.

Each tool starts its repository imports with `import tools  # noqa: F401`:
- `python -m tools.x` (and the tests): the repository root is on sys.path, so that line finds the tools/ package
  itself and this file is never read.
- `python tools/x.py`: Python puts tools/ (not the root) first on sys.path, so the line finds this file instead.
  It puts the root on sys.path (for lib, models) and gives this module the package's __path__, so the tool's
  `from tools._x import ...` lines load the same modules they load under `-m`.

Why a line at all: in script mode nothing of ours runs before the tool's own imports, and `import tools` sorts
before `from lib ...` (isort), so it runs before the first import that needs the root.
"""
import os
import sys

if __name__ == "tools":  # found as the top-level `tools`: only under `python tools/x.py`
    TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
    __path__ = [TOOLS_DIR]
    sys.path.insert(0, os.path.dirname(TOOLS_DIR))
