"""Fast generation: a functional Llama/Qwen2 decoder over a static KV cache (``rollout=static``)."""

from .decoder import Decoder, UnsupportedModelError
from .engine import StaticEngine
from .sampling import Knobs, choose

__all__ = ["Decoder", "Knobs", "StaticEngine", "UnsupportedModelError", "choose"]
