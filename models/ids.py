"""Name-based ids: ``str(uuid.uuid5(namespace, name))`` without the UUID objects (several ids
per order make them count: about 1.6 µs each here against 5 µs through ``uuid``)."""

from __future__ import annotations

import hashlib
import uuid


def uuid5_text(namespace: uuid.UUID | bytes, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` (``namespace`` as a UUID or its 16 bytes)."""
    space = namespace.bytes if isinstance(namespace, uuid.UUID) else namespace
    digest = bytearray(hashlib.sha1(space + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
