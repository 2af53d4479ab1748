"""Started by every Python process the fast test lane starts (tests/conftest.py puts this folder first
on PYTHONPATH): such a process may not import torch. The fast lane's budget has no room for the
seconds torch, Lightning and MLflow take to import in a fresh interpreter; a test that needs a real
stage process belongs to the slow lane (``@pytest.mark.slow``). The offending command is logged to
``LIGHTSAFT_TORCH_LOG``, which the lane's autouse fixture turns into a failure of the test."""

import os
import sys

if os.environ.get("LIGHTSAFT_FAST_LANE") == "1":

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            # importlib.util.find_spec (a look-up: is torch installed?) imports nothing; an import
            # reaches this finder through the import system's _find_and_load_unlocked.
            if name == "torch" and sys._getframe(2).f_code.co_name == "_find_and_load_unlocked":
                log = os.environ.get("LIGHTSAFT_TORCH_LOG")
                if log:
                    with open(log, "a") as f:
                        f.write(" ".join(sys.argv) + "\n")
                raise ImportError(
                    "the fast test lane starts no Python process that imports torch; mark the test @pytest.mark.slow"
                )
            return None

    sys.meta_path.insert(0, _NoTorch())
