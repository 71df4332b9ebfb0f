"""audience-sync: sync approved customer audience groups into ad platforms by segment name."""

from __future__ import annotations

__version__ = "0.1.0"
