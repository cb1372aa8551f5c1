"""Sanity check of an FFCV ``.beton`` before a Loader touches it.

ffcv's Reader trusts the file: a truncated or foreign file gives an assertion, a numpy
error or garbage images deep inside a numba kernel.  This reads the header, the field
descriptors and the allocation table, and checks that they agree with each other and
with the file size, so a bad path fails early with one line.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from imagenet_repro.errors import ConfigError

_IMAGE_TYPE_ID, _INT_TYPE_ID = 2, 1  # ffcv.types.TYPE_ID_HANDLER: RGBImageField, IntField


def check_beton(path: str | Path, fields: dict[str, int] | None = None) -> int:
    """Validate ``path`` as a complete ffcv ``.beton``; return its number of samples.

    ``fields`` maps required field names to ffcv type ids (default: image + label).
    """
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType, get_handlers, get_metadata_type
    from ffcv.utils import decode_null_terminated_string

    path = Path(path)
    fields = {"image": _IMAGE_TYPE_ID, "label": _INT_TYPE_ID} if fields is None else fields
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    size = path.stat().st_size

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{path}: not a complete FFCV .beton file ({why})")

    if size < HeaderType.itemsize:
        raise bad(f"{size} bytes, shorter than the header")
    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    if int(header["version"]) != CURRENT_VERSION:
        raise bad(f"format version {int(header['version'])}, expected {CURRENT_VERSION}")
    num_fields, page = int(header["num_fields"]), int(header["page_size"])
    num_samples, alloc_ptr = int(header["num_samples"]), int(header["alloc_table_ptr"])
    if not 1 <= num_fields <= 64 or page < (1 << 21) or page & (page - 1):
        raise bad(f"implausible header: {num_fields} fields, page size {page}")
    desc_end = HeaderType.itemsize + num_fields * FieldDescType.itemsize
    if size < desc_end:
        raise bad("truncated in the field descriptors")
    descs = np.fromfile(path, dtype=FieldDescType, count=num_fields, offset=HeaderType.itemsize)
    names = [decode_null_terminated_string(d["name"]) for d in descs]
    type_ids = dict(zip(names, (int(d["type_id"]) for d in descs)))
    for name, type_id in fields.items():
        if type_ids.get(name) != type_id:
            raise bad(f"field {name!r} missing or of the wrong type; fields are {names}")
    try:
        meta_type = get_metadata_type(get_handlers(descs))
    except Exception as exc:
        raise bad(f"unreadable field descriptors: {exc}") from None
    meta_end = desc_end + num_samples * meta_type.itemsize
    if alloc_ptr == 0:
        raise bad("header never finalised: the write was interrupted")
    if not meta_end <= alloc_ptr <= size:
        raise bad(f"allocation table at byte {alloc_ptr}, file has {size} bytes: truncated")
    if (size - alloc_ptr) % ALLOC_TABLE_TYPE.itemsize:
        raise bad("allocation table has a partial entry: truncated")
    table = np.fromfile(path, dtype=ALLOC_TABLE_TYPE, offset=alloc_ptr)
    if len(table) and int((table["ptr"] + table["size"]).max()) > alloc_ptr:
        raise bad("sample data extends past the data region: truncated")
    if len(table) and int(table["sample_id"].max()) >= num_samples:
        raise bad("allocation table names samples beyond num_samples")
    return num_samples


@functools.lru_cache(maxsize=32)
def _label_range(path: str, size: int, mtime_ns: int) -> tuple[int, int]:
    from ffcv.types import FieldDescType, HeaderType, get_handlers, get_metadata_type
    from ffcv.utils import decode_null_terminated_string

    header = np.fromfile(path, dtype=HeaderType, count=1)[0]
    num_fields, num_samples = int(header["num_fields"]), int(header["num_samples"])
    descs = np.fromfile(path, dtype=FieldDescType, count=num_fields, offset=HeaderType.itemsize)
    names = [decode_null_terminated_string(d["name"]) for d in descs]
    meta = np.fromfile(path, dtype=get_metadata_type(get_handlers(descs)), count=num_samples,
                       offset=HeaderType.itemsize + descs.nbytes)
    labels = meta[f"f{names.index('label')}"]
    if len(labels) == 0:
        return 0, -1
    return int(labels.min()), int(labels.max())


def label_range(path: str | Path) -> tuple[int, int]:
    """(smallest, largest) label of a checked ``.beton`` (see :func:`check_beton`).

    Labels are an IntField, stored in the per-sample metadata table next to the header
    (8 bytes of label per sample: ~30 MB for ImageNet's train set), so this reads no
    image.  Cached per file version (path, size, mtime)."""
    stat = Path(path).stat()
    return _label_range(str(path), stat.st_size, stat.st_mtime_ns)


def check_labels(path: str | Path, num_classes: int, key: str) -> None:
    """ConfigError unless every label of ``path`` is in ``[0, num_classes)``."""
    lo, hi = label_range(path)
    if hi < 0 and lo == 0:
        raise ConfigError(f"{key}: {path} holds no samples")
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"{key}: {path} has labels {lo}..{hi}, outside [0, data.num_classes={num_classes}): "
                          f"set data.num_classes to {hi + 1} or use the matching file")
