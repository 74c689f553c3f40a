"""A module whose import fails, for the CLI's error path."""

from __future__ import annotations

raise RuntimeError("this module is broken on purpose")
