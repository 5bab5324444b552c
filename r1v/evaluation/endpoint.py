"""A client for any OpenAI-compatible chat endpoint (OpenAI, a local vLLM or SGLang server, …).

Used by the ``openai_judge`` scorer and reviser. Standard library only (urllib): the endpoint is
given by URL, the key (if any) by the name of an environment variable, never in a config file.
``check()`` runs when the plugin is built, so an unreachable endpoint stops the run before anything
is generated.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any

from PIL import Image

from r1v.core.errors import JudgeError
from r1v.data.images import to_rgb


class ChatEndpoint:
    def __init__(self, url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 max_retries: int = 2, temperature: float = 0.0, max_tokens: int = 1024) -> None:  # fmt: skip
        if not re.match(r"^https?://", url or ""):
            raise JudgeError(f"judge url '{url}' is not an http(s) URL (e.g. http://localhost:8000/v1)")
        self.url, self.model = url.rstrip("/"), model
        self.key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.temperature, self.max_tokens = temperature, max_tokens

    def _request(self, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers,
                                     method="POST" if body is not None else "GET")  # fmt: skip
        with urllib.request.urlopen(req, timeout=timeout or self.timeout_s) as resp:
            body = resp.read().decode(errors="replace")
        try:
            return json.loads(body or "null")
        except json.JSONDecodeError:
            raise JudgeError(
                f"judge endpoint {self.url}{path} did not answer JSON (is it an OpenAI-compatible "
                f"API? reply starts {body[:60]!r})"
            ) from None

    def check(self) -> None:
        """Fail fast: the endpoint answers (``GET /models``; a 404 there still proves it is up)."""
        try:
            self._request("/models", timeout=min(self.timeout_s, 10.0))
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise JudgeError(f"judge endpoint {self.url} refused the request (HTTP {e.code}): "
                                 "set the API key variable named by api_key_env") from None  # fmt: skip
            if e.code != 404:
                raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code} to GET /models") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise JudgeError(f"judge endpoint {self.url} is unreachable ({reason}); start the server or fix "
                             "the url knob") from None  # fmt: skip

    def chat(self, messages: list[dict[str, Any]]) -> str:
        """The assistant's reply; retried on connection errors and 5xx with backoff."""
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}  # fmt: skip
        for attempt in range(self.max_retries + 1):
            try:
                reply = self._request("/chat/completions", body)
                return str(reply["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                if e.code < 500 or attempt == self.max_retries:
                    raise JudgeError(f"judge endpoint {self.url}: HTTP {e.code} on /chat/completions") from None
            except (urllib.error.URLError, OSError) as e:
                if attempt == self.max_retries:
                    raise JudgeError(f"judge endpoint {self.url} stopped answering: {e}") from None
            except (KeyError, IndexError, TypeError) as e:
                raise JudgeError(f"judge endpoint {self.url}: reply is not a chat completion ({e})") from None
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def image_part(image: Image.Image, max_side: int = 1024) -> dict[str, Any]:
    """An image as an OpenAI ``image_url`` content part (PNG data URL, downscaled to ``max_side``)."""
    im = to_rgb(image)  # the judge sees what the model saw (EXIF rotation, transparency over white)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def user_message(text: str, images: list[Image.Image]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*(image_part(im) for im in images), {"type": "text", "text": text}]}]


_SCORE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(reply: str) -> float:
    """The last "Score: x" of a reply (else its last number)."""
    hits = _SCORE.findall(reply) or re.findall(r"-?\d+(?:\.\d+)?", reply)
    if not hits:
        raise ValueError(f"no score in the judge's reply {reply[:80]!r}")
    return float(hits[-1])
