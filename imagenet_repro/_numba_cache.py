"""Keep numba's compiled code on disk, so that each FFCV process need not compile it again.

:func:`cached_njit` is ``numba.njit(cache=True)`` for the suite's own kernels
(:mod:`imagenet_repro.data.seeding`, the flip of :mod:`imagenet_repro.data.ffcv_ops`), falling back
to an uncached ``njit`` where numba finds no writable cache folder (a read-only install and home).

``import ffcv`` builds a ``numba.typed.Dict`` at module level (``ffcv.fields.rgb_image.IMAGE_MODES``),
which compiles numba's typed-dict functions (``_make_dict``, ``_setitem``, ...): about 6 s of the
~20 s of numba compilation every rank of every job pays at start on a 2-core CPU (the trainer's own
kernels in :mod:`imagenet_repro.data.seeding` are ``cache=True``; the pipelines FFCV generates at
run time cannot be cached).  numba's typed-dict functions are plain ``@njit`` dispatchers without
``cache=True``; :func:`install` turns numba's own on-disk cache on for them (``enable_caching``,
what ``cache=True`` does), where numba keeps any cache: ``__pycache__`` beside numba's files when
writable, else the user's cache folder, or ``NUMBA_CACHE_DIR``.  The cache is keyed on numba's
source file, the signature and the CPU, and only saves time: the compiled code is the same.

``import imagenet_repro`` arms it lazily, as :mod:`imagenet_repro._torchvision_compat`: a meta-path
hook runs :func:`install` just before the first ``import ffcv``, so commands that never read a
``.beton`` do not import numba.  Without numba, or with a numba whose dispatchers lack
``enable_caching``, it does nothing.

Measured on the 2-core EPYC VM, one rank of a rehearsal's ResNet-50 job
(``repro train`` of a rehearsal config, from a warm cache): numba compilation 20.8 s -> 5.5 s, the
whole process 38 s -> 22 s.
"""
from __future__ import annotations

from imagenet_repro._before_import import run_before_first_import

_INSTALLED = False


def cached_njit(**options):
    """``numba.njit(cache=True, **options)`` as a decorator; without the cache where numba has
    nowhere to write it (it refuses such a function at decoration)."""
    from numba import njit

    def decorate(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available for file ..."
            return njit(**options)(fn)

    return decorate


def install() -> bool:
    """Turn numba's on-disk cache on for its typed-dict functions. Returns True if it did."""
    global _INSTALLED
    if _INSTALLED:
        return False
    _INSTALLED = True
    try:
        from numba.core.dispatcher import Dispatcher
        from numba.typed import typeddict
    except ImportError:
        return False
    done = False
    for name in dir(typeddict):
        fn = getattr(typeddict, name)
        if isinstance(fn, Dispatcher) and hasattr(fn, "enable_caching"):
            try:
                fn.enable_caching()
            except RuntimeError:  # no writable cache folder: compiled each time, as before
                return done
            done = True
    return done


def arm() -> None:
    run_before_first_import("ffcv", install)
