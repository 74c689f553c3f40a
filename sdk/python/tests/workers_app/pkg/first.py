"""One task of the package."""

from __future__ import annotations

import ferry


@ferry.task("pkg-first")
async def first(n: int) -> int:
    return n + 1
