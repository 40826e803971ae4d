"""ComfyUI entry point of the DirectAnimator node pack."""

import os
import sys

# The library (directanimator/) sits beside nodes/. Append, never prepend: ComfyUI's own top-level
# `nodes` module must keep winning over this pack's `nodes` package, which is imported relatively below.
_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
