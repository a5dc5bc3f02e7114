"""Blank every GPU code image but one architecture's in a shared library's CUDA fat binaries.

The GPU machine lent for benchmarks takes at most 64 MiB per call; faiss-gpu's library holds its
kernels for seven architectures. Zeroing the images the H100 never loads (keeping sm_90 machine
code) leaves the layout as it was and lets the wheel compress to a fraction.

    python keep_one_arch.py LIBRARY [ARCH]   # ARCH default 90; rewrites LIBRARY in place
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

MAGIC = struct.pack("<I", 0xBA55ED50)
SASS = 2


def keep_one_arch(data: bytearray, arch: int) -> tuple[int, int]:
    """Zero the payload of every fat-binary entry that is not `arch` machine code."""
    kept = blanked = 0
    position = data.find(MAGIC)
    while position >= 0:
        _, header_size, fat_size = struct.unpack_from("<HHQ", data, position + 4)
        entry, end = position + header_size, position + header_size + fat_size
        while entry + 32 <= end:
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, entry)
            entry_arch = struct.unpack_from("<I", data, entry + 28)[0]
            if entry_header == 0:
                break
            payload = entry + entry_header
            if kind == SASS and entry_arch == arch:
                kept += 1
            else:
                data[payload : payload + size] = bytes(size)
                blanked += 1
            entry = payload + size
        position = data.find(MAGIC, end)
    return kept, blanked


def main() -> None:
    library = Path(sys.argv[1])
    arch = int(sys.argv[2]) if len(sys.argv) > 2 else 90
    data = bytearray(library.read_bytes())
    kept, blanked = keep_one_arch(data, arch)
    if kept == 0:
        sys.exit(f"{library}: no sm_{arch} machine code to keep")
    library.write_bytes(bytes(data))
    print(f"{library.name}: kept {kept} sm_{arch} images, blanked {blanked}")


if __name__ == "__main__":
    main()
