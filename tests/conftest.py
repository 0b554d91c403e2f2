import os
import sys

# tests import the project's packages (lib, models) and their own helpers (direct_formulas, datagen) by name
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)
