"""Reading `.npz` archives of untrusted origin (model bundles) without trusting what they declare.

`np.load` allocates an array of the shape its header declares before reading a byte of it,
so a few hundred bytes can ask for terabytes; it also follows whatever the zip directory
says. Following Python's guidance for archives (inspect before extracting: member names,
sizes, compression ratios), every member is checked against the archive file before an
array is built:

* only `<name>.npy` members directly in the archive, each once, at most `MAX_MEMBERS`;
* stored uncompressed, as `np.savez` writes them (no decompression bomb), and together no
  larger than the file itself (overlapping members would be);
* a header that declares exactly the bytes the member holds, a plain numeric dtype (no
  object arrays, hence no pickle), and at most `max_elements` entries when the caller knows
  the size (a bundle's gene count).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

MAX_MEMBERS = 64


class ArchiveError(ValueError):
    """An .npz archive that is damaged or declares more than it holds; the message names the member."""


def read_npz(path: Path, *, max_elements: int | None = None) -> dict[str, np.ndarray]:
    """Every array of the archive at `path`, each checked before it is allocated."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ArchiveError(f"not a readable .npz archive (truncated or damaged?): {error}") from None
    with archive:
        members = _checked_members(archive, os.path.getsize(path))
        arrays = {}
        for info in members:
            try:
                arrays[info.filename[:-4]] = _read_member(archive, info, max_elements)
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise ArchiveError(f"member {info.filename}: damaged: {error}") from None
        return arrays


def _checked_members(archive: zipfile.ZipFile, archive_bytes: int) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"holds {len(members)} members; at most {MAX_MEMBERS} are read")
    names = [info.filename for info in members]
    for info in members:
        name = info.filename
        if not name.endswith(".npy") or "/" in name or "\\" in name or name.startswith(".") or len(name) > 200:
            raise ArchiveError(f"member {name!r} is not an array file (<name>.npy) of the archive itself")
        if names.count(name) > 1:
            raise ArchiveError(f"member {name} appears more than once")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise ArchiveError(f"member {name} is compressed; leukspark writes (and reads) only stored members")
    if sum(info.file_size for info in members) > archive_bytes:
        raise ArchiveError(f"its members declare {sum(info.file_size for info in members)} bytes, more than the "
                           f"file's {archive_bytes}")
    return members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_elements: int | None) -> np.ndarray:
    fmt = np.lib.format
    with archive.open(info) as member:
        try:
            version = fmt.read_magic(member)
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in readers:  # 3.0 only for non-Latin-1 field names, which no array here has
                raise ValueError(f"format version {version} is not read here")
            shape, _, dtype = readers[version](member)
        except (ValueError, TypeError, SyntaxError) as error:
            raise ArchiveError(f"member {info.filename}: not an .npy array: {error}") from None
        header_bytes = member.tell()
    if dtype.hasobject or dtype.fields is not None or dtype.itemsize == 0:
        raise ArchiveError(f"member {info.filename}: dtype {dtype} is not a plain numeric type")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise ArchiveError(f"member {info.filename}: declares shape {shape}, more than the {max_elements} "
                           "entries it may hold")
    if count * dtype.itemsize != info.file_size - header_bytes:
        raise ArchiveError(f"member {info.filename}: declares shape {shape} of {dtype} "
                           f"({count * dtype.itemsize} bytes) but holds {info.file_size - header_bytes}")
    with archive.open(info) as member:
        return fmt.read_array(member, allow_pickle=False)
