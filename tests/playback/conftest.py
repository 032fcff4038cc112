from __future__ import annotations

from .support import customer_page

__all__ = ["customer_page"]
