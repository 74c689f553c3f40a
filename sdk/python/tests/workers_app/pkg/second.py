"""Another task of the package, a thread one."""

from __future__ import annotations

import ferry


@ferry.task("pkg-second")
def second(text: str) -> str:
    return text.upper()
