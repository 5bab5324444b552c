"""One completion streamed as it is generated (``python -m r1v chat``, :meth:`r1v.model.handle.Model.chat`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from r1v.core.interfaces import Sample


def answer(model: Any, processor: Any, engine: Any, sample: Sample, max_new_tokens: int, greedy: bool,
           write: Callable[[str], None] | None = None) -> str:  # fmt: skip
    """One completion; with ``write`` (and the static engine) the text is streamed as it is generated."""
    tok = processor.tokenizer
    ids: list[int] = []
    shown = [0]

    def on_token(step: list[int]) -> None:
        if step[0] in (tok.eos_token_id, tok.pad_token_id):
            return
        ids.append(step[0])
        text = tok.decode(ids, skip_special_tokens=False)
        if not text.endswith("\ufffd"):  # a multi-byte character still incomplete: wait for its next token
            write(text[shown[0] :])
            shown[0] = len(text)

    streaming = write is not None and hasattr(engine, "decode")
    rows = engine.generate_ids(model, processor, [sample], max_new_tokens, greedy=greedy,
                               **({"on_token": on_token} if streaming else {}))  # fmt: skip
    text = processor.decode_completion(rows[0])
    if write is not None and not streaming:
        write(text)
    elif write is not None and len(text) > shown[0]:
        write(text[shown[0] :])
    return text
