"""The torchvision shim: `import imagenet_repro` stays light, and torchvision/timm import beside a CPU torch."""
from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import imagenet_repro
assert "torch" not in sys.modules, "import imagenet_repro must not import torch"
import timm, torchvision
from torchvision.transforms import v2
m = torchvision.models.resnet18(num_classes=3)
assert timm.create_model("resnet18", num_classes=3).fc.out_features == 3
print("ok", m.fc.out_features)
"""


def test_import_is_light_and_torchvision_timm_work():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok 3"
