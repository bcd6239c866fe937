"""C++ CPU kernels compiled from inline source once, into torch's extension cache.

``make setup`` builds each (``python -m`` on its module), so training loads it in a second.
Where one cannot be built (no compiler or headers) or its environment switch is ``0``, the
caller uses its torch-ops path instead; the tests check both paths agree.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["InlineKernel"]

log = logging.getLogger("fm_spark.native")


class InlineKernel:
    """One extension: ``name`` in torch's cache, its ``functions``, and the switch
    (``FM_SPARK_..._KERNEL=0``) that turns it off."""

    def __init__(self, name: str, source: str, functions: list[str], switch: str) -> None:
        self.name, self.source, self.functions, self.switch = name, source, functions, switch
        self.module: Any = None
        self._failed = False

    def build(self, verbose: bool = False) -> Any:
        """Compile (or load from the cache) the extension; ``None`` if it cannot be."""
        if self.module is not None or self._failed:
            return self.module
        try:
            from torch.utils.cpp_extension import load_inline

            self.module = load_inline(
                name=self.name,
                cpp_sources=self.source,
                functions=self.functions,
                extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                verbose=verbose,
            )
        except Exception as exc:  # no compiler, no headers: the caller falls back to torch
            self._failed = True
            log.warning("%s unavailable, using torch ops: %s", self.name, str(exc)[:300])
        return self.module

    def available(self) -> bool:
        """Whether the kernel runs (built here, and not switched off)."""
        if os.environ.get(self.switch, "1") == "0":
            return False
        return self.build() is not None
