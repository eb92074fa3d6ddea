import os
import sys

# The toy task is named "tests.train.toy_task:ToyTask" in configs, so the repo root must be
# importable however pytest was started (python -m pytest adds it; plain `pytest` may not).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
