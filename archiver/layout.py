"""Every byte of a zip archive accounted for, so that what verify hashes is what TorchServe unpacks.

Python's `zipfile` reads an archive through its central directory (at the end of the file);
TorchServe 0.12's frontend unpacks with Java's `ZipInputStream`, which walks the local file
headers from the first byte forwards and never looks at the central directory. The two views of
one file can differ: a local entry that no central record points to is invisible to `zipfile` and
extracted by TorchServe. So torchship reads both views itself and accepts only archives in which
they are provably the same thing:

- the file starts with a local header, and the entries follow one another with no gap;
- each local header agrees with its central record (name bytes, flags, method, CRC, sizes), and
  the central records point to the entries in order;
- after the last entry's data come only the central directory, the Zip64 end records when
  needed, and the end record, which ends the file (no comment, no trailing bytes);
- names are printable ASCII (Java decodes names as UTF-8, Python as cp437 without the UTF-8 flag:
  ASCII is the one alphabet in which the two cannot disagree); no encryption, no data
  descriptors, only stored or deflated members, one disk;
- `read_members` then inflates each member from exactly its byte range: the deflate stream must
  end exactly where the compressed size says, give exactly the declared size, and match the CRC.

This is what Python's own `zipfile` writes (torch-model-archiver and torchship's builder both use
it). Anything else is refused with the reason.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["LayoutError", "Entry", "scan", "read_members", "MAX_MEMBERS", "MAX_EXTRA"]

MAX_MEMBERS = 10_000
MAX_EXTRA = 1024  # bytes of extra fields per header: Python writes at most a 20-byte Zip64 block
MAX_CENTRAL = 16 << 20  # bytes of central directory (10,000 members with long names fit well)

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
_END = struct.Struct("<4sHHHHIIH")  # 22 bytes
_END64 = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_LOCATOR64 = struct.Struct("<4sIQI")  # 20 bytes
LOCAL_SIG, CENTRAL_SIG, END_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
END64_SIG, LOCATOR64_SIG = b"PK\x06\x06", b"PK\x06\x07"
_U32, _U16 = 0xFFFFFFFF, 0xFFFF
_ALLOWED_FLAGS = 0x0006  # deflate's compression-level hints; nothing else (bit 0 encryption, 3 descriptor, ...)
_STORED, _DEFLATED = 0, 8


class LayoutError(ValueError):
    """The archive's bytes are not laid out as torchship accepts (see the module docstring)."""


@dataclass(frozen=True)
class Entry:
    """One member, as both views agree on it."""

    name: str
    method: int
    crc: int
    compressed_size: int
    file_size: int
    header_offset: int
    data_offset: int
    external_attr: int


def scan(f: BinaryIO, file_size: int) -> list[Entry]:
    """Parse both views of the zip in `f` and check that they agree byte for byte (headers only:
    no member is inflated). Raises LayoutError with the reason."""
    cd_offset, cd_size, count, end_start = _read_end(f, file_size)
    if count > MAX_MEMBERS:
        raise LayoutError(f"{count} members (at most {MAX_MEMBERS})")
    if cd_size > MAX_CENTRAL:
        raise LayoutError(f"central directory of {cd_size:,} bytes (at most {MAX_CENTRAL:,})")
    if cd_offset + cd_size != end_start:
        raise LayoutError(
            f"the end record places the central directory {end_start - cd_offset - cd_size:+,} bytes "
            "away from where it is (data prepended or inserted, or bytes between it and the end record)"
        )
    f.seek(cd_offset)
    central = f.read(cd_size)
    if len(central) != cd_size:
        raise LayoutError("the central directory is truncated")
    entries: list[Entry] = []
    pos = 0  # in `central`
    expected_offset = 0  # where the next local header must start
    for index in range(count):
        record, name_bytes, extra, pos = _central_record(central, pos, index)
        (_, _, _, flags, method, _, _, crc, csize, usize, _, _, _, disk, _, external, offset) = record
        if disk != 0:
            raise LayoutError(f"member {index} lies on disk {disk}: multi-disk archives are not accepted")
        usize, csize, offset = _zip64_central(extra, usize, csize, offset, index)
        name = _name(name_bytes, index)
        if offset != expected_offset:
            where = (
                "data prepended before the first entry"
                if index == 0
                else f"{offset - expected_offset:+,} bytes between entries"
            )
            raise LayoutError(
                f"{name!r}: its local header is at offset {offset:,}, expected {expected_offset:,} "
                f"({where}): hidden or unaccounted bytes"
            )
        _check_flags_method(name, flags, method)
        local = _read_local(f, offset, name)
        (_, _, l_flags, l_method, _, _, l_crc, l_csize, l_usize, l_nlen, l_xlen) = local
        l_name = f.read(l_nlen)
        l_extra = f.read(l_xlen)
        if len(l_name) != l_nlen or len(l_extra) != l_xlen:
            raise LayoutError(f"{name!r}: the local header is truncated")
        if l_xlen > MAX_EXTRA:
            raise LayoutError(f"{name!r}: {l_xlen} bytes of extra fields in the local header (at most {MAX_EXTRA})")
        l_usize, l_csize = _zip64_local(l_extra, l_usize, l_csize, name)
        mismatch = [
            what
            for what, a, b in (
                ("name", l_name, name_bytes),
                ("flags", l_flags, flags),
                ("method", l_method, method),
                ("CRC", l_crc, crc),
                ("compressed size", l_csize, csize),
                ("size", l_usize, usize),
            )
            if a != b
        ]
        if mismatch:
            shown = f" (local {l_name!r})" if "name" in mismatch else ""
            raise LayoutError(
                f"{name!r}: the local header disagrees with the central directory on "
                f"{', '.join(mismatch)}{shown}: two views of one archive"
            )
        if name.endswith("/") and (usize or crc):
            raise LayoutError(f"{name!r} is a folder that carries {usize:,} bytes of data (never extracted: hidden)")
        data_offset = offset + _LOCAL.size + l_nlen + l_xlen
        expected_offset = data_offset + csize
        if expected_offset > cd_offset:
            raise LayoutError(f"{name!r}: its data runs into the central directory")
        entries.append(Entry(name, method, crc, csize, usize, offset, data_offset, external))
    if pos != cd_size:
        raise LayoutError(f"{cd_size - pos:,} bytes of the central directory belong to no record")
    if expected_offset != cd_offset:
        raise LayoutError(
            f"{cd_offset - expected_offset:,} bytes after the last entry that no central record "
            "accounts for (a hidden entry?)"
        )
    _no_duplicates(entries)
    return entries


def read_members(
    f: BinaryIO, entries: list[Entry], *, block: int = 8 << 20, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[Entry, str]]:
    """(entry, sha256 hex) for each member, inflated from exactly its byte range. Raises LayoutError
    when a member's data do not end where its header says, or differ in size or CRC."""
    for entry in entries:
        digest = hashlib.sha256()
        crc = 0
        produced = 0
        inflater = zlib.decompressobj(-15) if entry.method == _DEFLATED else None
        f.seek(entry.data_offset)
        left = entry.compressed_size
        while left:
            chunk = f.read(min(block, left))
            if not chunk:
                raise LayoutError(f"{entry.name!r}: the archive ends inside its data")
            left -= len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            pending = chunk
            while True:
                if inflater is None:
                    out, pending = pending, b""
                else:
                    try:
                        # at most one block out per call (memory stays bounded at any ratio), and
                        # never more than declared + 1 in all: a lying size cannot inflate a bomb
                        out = inflater.decompress(pending, min(block, entry.file_size - produced + 1))
                    except zlib.error as exc:
                        raise LayoutError(f"{entry.name!r}: its compressed data are corrupt ({exc})") from None
                    pending = inflater.unconsumed_tail
                produced += len(out)
                if produced > entry.file_size:
                    raise LayoutError(f"{entry.name!r}: holds more than its declared {entry.file_size:,} bytes")
                digest.update(out)
                crc = zlib.crc32(out, crc)
                if not pending:
                    break
        if inflater is not None:
            if not inflater.eof:
                raise LayoutError(f"{entry.name!r}: its deflate stream does not end where its compressed size says")
            if inflater.unused_data:
                raise LayoutError(
                    f"{entry.name!r}: {len(inflater.unused_data)} bytes follow the end of its deflate "
                    "stream inside its compressed size (hidden bytes)"
                )
        if produced != entry.file_size:
            raise LayoutError(f"{entry.name!r}: holds {produced:,} bytes, its header says {entry.file_size:,}")
        if crc != entry.crc:
            raise LayoutError(f"{entry.name!r}: CRC differs from its header (corrupt or altered)")
        yield entry, digest.hexdigest()


# ------------------------------------------------------------------ the pieces


def _read_end(f: BinaryIO, file_size: int) -> tuple[int, int, int, int]:
    """(central directory offset, size, member count, start of the end records)."""
    if file_size < _END.size:
        raise LayoutError("too short to be a zip archive")
    f.seek(file_size - _END.size)
    end = _END.unpack(f.read(_END.size))
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = end
    if sig != END_SIG:
        raise LayoutError("the file does not end with a zip end record (a comment or bytes appended after it?)")
    if comment:
        raise LayoutError("the end record has a comment: not written by torchship or torch-model-archiver")
    if disk or cd_disk or n_disk != n_total:
        raise LayoutError("multi-disk archives are not accepted")
    end_start = file_size - _END.size
    # Zip64: a locator right before the end record (zipfile looks there whatever the end record
    # says, and writes one whenever a count, size or offset outgrows the classic fields)
    locator = b""
    if end_start >= _LOCATOR64.size + _END64.size:
        f.seek(end_start - _LOCATOR64.size)
        locator = f.read(_LOCATOR64.size)
    if not locator.startswith(LOCATOR64_SIG):
        if _U32 in (cd_size, cd_offset) or _U16 in (n_disk, n_total):
            raise LayoutError("a Zip64 archive without its Zip64 end records")
        return cd_offset, cd_size, n_total, end_start
    _, l_disk, end64_offset, disks = _LOCATOR64.unpack(locator)
    if l_disk != 0 or disks != 1:
        raise LayoutError("the Zip64 end locator names another disk")
    if end64_offset != end_start - _LOCATOR64.size - _END64.size:
        raise LayoutError("the Zip64 end record is not right before its locator (bytes in between?)")
    f.seek(end64_offset)
    (sig64, size64, _, _, disk64, cd_disk64, n_disk64, n_total64, cd_size64, cd_offset64) = _END64.unpack(
        f.read(_END64.size)
    )
    if sig64 != END64_SIG or size64 != _END64.size - 12 or disk64 or cd_disk64 or n_disk64 != n_total64:
        raise LayoutError("the Zip64 end record is malformed, has extensible data, or names another disk")
    for field32, field64 in ((n_total, n_total64), (cd_size, cd_size64), (cd_offset, cd_offset64)):
        if field32 not in (_U32, _U16) and field32 != field64:
            raise LayoutError("the end record and the Zip64 end record disagree")
    return cd_offset64, cd_size64, n_total64, end64_offset


def _central_record(central: bytes, pos: int, index: int) -> tuple[tuple, bytes, bytes, int]:
    if pos + _CENTRAL.size > len(central):
        raise LayoutError(f"the central directory ends inside record {index}")
    record = _CENTRAL.unpack_from(central, pos)
    if record[0] != CENTRAL_SIG:
        raise LayoutError(f"central record {index} has a bad signature")
    nlen, xlen, clen = record[10], record[11], record[12]
    if clen:
        raise LayoutError(f"central record {index} carries a file comment")
    if xlen > MAX_EXTRA:
        raise LayoutError(f"central record {index} has {xlen} bytes of extra fields (at most {MAX_EXTRA})")
    start = pos + _CENTRAL.size
    end = start + nlen + xlen
    if end > len(central):
        raise LayoutError(f"the central directory ends inside record {index}")
    return record, central[start : start + nlen], central[start + nlen : end], end


def _read_local(f: BinaryIO, offset: int, name: str) -> tuple:
    f.seek(offset)
    raw = f.read(_LOCAL.size)
    if len(raw) != _LOCAL.size:
        raise LayoutError(f"{name!r}: its local header lies past the end of the file")
    local = _LOCAL.unpack(raw)
    if local[0] != LOCAL_SIG:
        raise LayoutError(f"{name!r}: no local header where the central directory points")
    return local


def _extra_fields(extra: bytes, where: str) -> dict[int, bytes]:
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(extra):
        if pos + 4 > len(extra):
            raise LayoutError(f"{where}: a truncated extra field")
        tag, size = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + size > len(extra):
            raise LayoutError(f"{where}: an extra field runs past its header")
        if tag in fields:
            raise LayoutError(f"{where}: extra field 0x{tag:04x} appears twice")
        fields[tag] = extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return fields


def _zip64_local(extra: bytes, usize: int, csize: int, name: str) -> tuple[int, int]:
    zip64 = _extra_fields(extra, f"{name!r} (local)").get(0x0001)
    if usize != _U32 and csize != _U32:
        return usize, csize
    # Java reads both sizes from the local Zip64 field when either is 0xFFFFFFFF: demand both
    if usize != _U32 or csize != _U32 or zip64 is None or len(zip64) < 16:
        raise LayoutError(f"{name!r}: a malformed Zip64 local header")
    return struct.unpack_from("<QQ", zip64)


def _zip64_central(extra: bytes, usize: int, csize: int, offset: int, index: int) -> tuple[int, int, int]:
    zip64 = _extra_fields(extra, f"central record {index}").get(0x0001)
    values = [usize, csize, offset]
    wanted = [i for i, v in enumerate(values) if v == _U32]
    if not wanted:
        return usize, csize, offset
    if zip64 is None or len(zip64) < 8 * len(wanted):
        raise LayoutError(f"central record {index}: a malformed Zip64 extra field")
    for n, i in enumerate(wanted):
        (values[i],) = struct.unpack_from("<Q", zip64, 8 * n)
    return values[0], values[1], values[2]


def _name(raw: bytes, index: int) -> str:
    if not raw or any(b < 0x20 or b > 0x7E for b in raw):
        raise LayoutError(f"member {index} has an empty name or one that is not printable ASCII: {raw[:60]!r}")
    return raw.decode("ascii")


def _check_flags_method(name: str, flags: int, method: int) -> None:
    if flags & 0x0001 or flags & 0x0040:
        raise LayoutError(f"{name!r} is encrypted")
    if flags & 0x0008:
        raise LayoutError(f"{name!r} uses a data descriptor (sizes after the data): not accepted")
    if flags & ~_ALLOWED_FLAGS:
        raise LayoutError(f"{name!r} has general-purpose flags 0x{flags:04x} that torchship does not accept")
    if method not in (_STORED, _DEFLATED):
        raise LayoutError(f"{name!r} uses compression method {method} (only stored and deflated are accepted)")


def _no_duplicates(entries: list[Entry]) -> None:
    """Each member becomes one file or folder on the server's disk: no two may be the same path
    ("a/b", "a/b/" and "A/B" are one on some file systems), and no file may also be the folder of
    another member ("a" beside "a/b": the server's unzip fails half-way)."""
    kinds: dict[str, str] = {}  # path -> "file" or "folder", for the entries themselves
    implied: set[str] = set()  # folders that deeper names need
    for entry in entries:
        key = entry.name.rstrip("/").lower()
        folder = entry.name.endswith("/")
        if key in kinds:
            raise LayoutError(f"duplicate member name {entry.name!r}")
        if not folder and key in implied:
            raise LayoutError(f"{entry.name!r} is a file and also the folder of another member")
        parts = key.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if kinds.get(parent) == "file":
                raise LayoutError(f"{entry.name!r} lies inside {parent!r}, which is a file")
            implied.add(parent)
        kinds[key] = "folder" if folder else "file"
