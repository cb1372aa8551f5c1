"""Sanity check of an FFCV ``.beton`` before a Loader touches it.

ffcv's Reader trusts the file: a truncated or foreign file gives an assertion, a numpy
error or garbage images deep inside a numba kernel.  This reads the header, the field
descriptors and the allocation table, and checks that they agree with each other and
with the file size, so a bad path fails early with one line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from imagenet_repro.config import ConfigError

_IMAGE_TYPE_ID, _INT_TYPE_ID = 2, 1  # ffcv.types.TYPE_ID_HANDLER: RGBImageField, IntField


def check_beton(path: str | Path, fields: dict[str, int] | None = None) -> int:
    """Validate ``path`` as a complete ffcv ``.beton``; return its number of samples.

    ``fields`` maps required field names to ffcv type ids (default: image + label).
    """
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType, get_handlers, \
        get_metadata_type
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
