"""core.torch_import: triton is blocked before torch is imported, on every path into core (issue 18).

Each case runs in a fresh interpreter: this test process may have imported torch already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` (dedented) in a fresh interpreter; the JSON it prints last."""
    code = textwrap.dedent(code)
    environ = {k: v for k, v in os.environ.items() if k not in ("METRICCD_ALLOW_TRITON", "OMP_WAIT_POLICY")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=300, env={**environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


STATE = """
import json, sys
print(json.dumps({"triton": repr(sys.modules.get("triton", "absent")),
                  "dynamo": "torch._dynamo" in sys.modules, "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("entry", [
    "import metric_change_detection.core.config",  # what the Processing algorithm imports
    "import metric_change_detection.core.tile_task",  # what a Dask worker unpickles
    "from metric_change_detection.core.torch_import import import_torch; import_torch()",
])
def test_every_path_into_core_blocks_triton_before_torch(entry):
    state = run_python(f"{entry}\nimport torch, torchvision\n{STATE}")
    assert state["triton"] == "None", state  # blocked: sys.modules["triton"] is None
    assert state["torch"]


def test_torchvision_and_dynamo_work_without_triton():
    state = run_python(textwrap.dedent(
        """
        from metric_change_detection.core.torch_import import import_torch, triton_state
        torch, torchvision = import_torch()
        import importlib.util, torch._dynamo
        from torchvision.models import mobilenet_v2
        assert importlib.util.find_spec("triton") is None
        assert triton_state() == "blocked"
        out = mobilenet_v2(weights=None).eval()(torch.zeros(1, 3, 64, 64))
        assert out.shape == (1, 1000)
        """) + STATE
    )
    assert state["triton"] == "None" and state["dynamo"]


def test_too_late_and_opt_out_are_reported():
    late = run_python(
        """
        import sys, types
        sys.modules["triton"] = types.ModuleType("triton")  # imported before the plugin
        from metric_change_detection.core.torch_import import block_triton, triton_state
        import json
        print(json.dumps({"blocked": block_triton(), "state": triton_state()}))
        """
    )
    assert late == {"blocked": False, "state": "loaded"}
    allowed = run_python(
        """
        import json
        from metric_change_detection.core.torch_import import block_triton, triton_state
        print(json.dumps({"blocked": block_triton(), "state": triton_state()}))
        """,
        METRICCD_ALLOW_TRITON="1",
    )
    assert allowed == {"blocked": False, "state": "not loaded"}


def test_missing_torch_names_the_package_and_the_fix():
    state = run_python(
        """
        import json, sys
        sys.modules["torchvision"] = None
        from metric_change_detection.core.errors import MissingDependency
        from metric_change_detection.core.torch_import import import_torch
        try:
            import_torch("HINT")
        except MissingDependency as exc:
            print(json.dumps({"message": str(exc)}))
        """
    )
    assert state["message"] == "The package 'torchvision' is missing. HINT"


PASSIVE = """
import json, os, sys
from metric_change_detection.core.torch_import import passive_thread_waiting
before = os.environ.get("OMP_WAIT_POLICY")
{setup}
print(json.dumps({{"passive": passive_thread_waiting(), "before": before,
                   "after": os.environ.get("OMP_WAIT_POLICY")}}))
"""


def test_passive_thread_waiting_only_before_torch_and_never_over_the_users_choice():
    assert run_python(PASSIVE.format(setup="")) == {"passive": True, "before": None, "after": "PASSIVE"}
    assert run_python(PASSIVE.format(setup=""), OMP_WAIT_POLICY="active") == {
        "passive": False, "before": "active", "after": "active"}
    assert run_python(PASSIVE.format(setup="import torch")) == {
        "passive": False, "before": None, "after": None}
