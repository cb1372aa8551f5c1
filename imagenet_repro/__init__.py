"""imagenet_repro: reproduce the ImageNet claims of Defazio (2025),
"Why Gradients Rapidly Increase Near the End of Training", and test optimizers the same way."""
from imagenet_repro import _numba_cache, _torchvision_compat

_torchvision_compat.arm()  # fixes `import torchvision` beside a CPU-only torch, lazily
_numba_cache.arm()  # numba's typed-dict code that `import ffcv` compiles, cached on disk, lazily

__version__ = "0.1.0"
