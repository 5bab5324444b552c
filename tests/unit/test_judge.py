"""The OpenAI-compatible judge (``openai_judge`` scorer and reviser, r1v.evaluation.endpoint's client) against a small
local fake server: never the internet."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from r1v.core.interfaces import ScoreContext
from r1v.data.synthetic import generate
from r1v.evaluation.endpoint import ChatEndpoint, JudgeError, image_part, parse_score, user_message
from r1v.evaluation.sample_scores import run_scorer


@dataclass
class FakeJudge:
    """State shared with the handler: what to answer, and what arrived."""

    url: str = ""
    reply: Callable[[dict[str, Any]], str] = lambda body: "Score: 3"
    models_status: int = 200
    chat_failures: int = 0  # answer this many chat requests with HTTP 500 first
    chat_raw: bytes | None = None  # answer chat requests with this body (HTTP 200, not JSON) instead
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: FakeJudge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with state.lock:
                state.paths.append(f"GET {self.path}")
                state.headers.append(dict(self.headers))
            if self.path != "/v1/models":
                self._send(404, {"error": "not found"})
            elif state.models_status != 200:
                self._send(state.models_status, {"error": "nope"})
            else:
                self._send(200, {"data": []})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.paths.append(f"POST {self.path}")
                state.headers.append(dict(self.headers))
                state.bodies.append(body)
                fail = state.chat_failures > 0
                state.chat_failures -= int(fail)
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": "not found"})
            elif fail:
                self._send(500, {"error": "try again"})
            elif state.chat_raw is not None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(state.chat_raw)))
                self.end_headers()
                self.wfile.write(state.chat_raw)
            else:
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": state.reply(body)}}]})

    return Handler


@pytest.fixture
def fake_judge(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the default api_key_env: never send a real key
    state = FakeJudge()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text_of(body: dict[str, Any]) -> str:
    parts = body["messages"][0]["content"]
    return "".join(p["text"] for p in parts if p["type"] == "text")


def _samples(n: int):
    return [generate(i, "val")[0] for i in range(n)]


# -- parse_score and message building ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "value"),
    [("Score: 3.5", 3.5), ("I'd say 2", 2.0), ("Reasoning... Score: 4", 4.0), ("score = 1", 1.0),
     ("Three objects, two steps. Score: 4\nDone in 10 seconds.", 4.0), ("SCORE:0", 0.0), ("Score: -1", -1.0)],
)  # fmt: skip
def test_parse_score(reply, value):
    assert parse_score(reply) == value


def test_parse_score_without_number():
    with pytest.raises(ValueError, match="no score in the judge's reply 'no number'"):
        parse_score("no number")


def test_user_message_images_as_png_data_urls():
    big = Image.new("RGB", (2048, 1024), (10, 20, 30))
    msg = user_message("hello", [big, Image.new("L", (8, 8))])
    assert msg[0]["role"] == "user"
    parts = msg[0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == "hello"
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.size == (1024, 512) and decoded.mode == "RGB"
    assert image_part(Image.new("RGB", (8, 8)))["image_url"]["url"].startswith("data:image/png;base64,")


# -- scorer ----------------------------------------------------------------------------------------------


def test_scorer_scores_and_sends_model_and_images(registry, fake_judge):
    fake_judge.reply = lambda body: "Reasoning... Score: 4"
    scorer = registry.build("scorer", "openai_judge", url=fake_judge.url, model="judge-x", aspect="difficulty")
    samples = _samples(3)
    assert scorer.score(samples, ScoreContext()) == [4.0, 4.0, 4.0]
    assert fake_judge.paths.count("GET /v1/models") == 1  # the check at build time
    assert len(fake_judge.bodies) == 3
    questions = sorted(s.question.replace("<image>", "").strip() for s in samples)
    assert sorted(re.search(r"Question: (.*)", _text_of(b)).group(1) for b in fake_judge.bodies) == questions
    for body in fake_judge.bodies:
        assert body["model"] == "judge-x" and body["temperature"] == 0.0
        parts = body["messages"][0]["content"]
        assert parts[0]["type"] == "image_url"
        assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1])))
        assert png.size == (64, 64)
        assert "How difficult is this question" in _text_of(body) and "<image>" not in _text_of(body)
        assert "Authorization" not in fake_judge.headers[-1]


def test_scorer_sample_aspect_sends_reasoning_and_answer(registry, fake_judge):
    scorer = registry.build("scorer", "openai_judge", url=fake_judge.url, aspect="sample", workers=1)
    s = _samples(1)[0]
    assert scorer.score([s], ScoreContext()) == [3.0]
    text = _text_of(fake_judge.bodies[0])
    assert f"Reasoning: {s.reasoning}" in text and f"Answer: {s.answer}" in text


def test_scorer_out_of_scale_reply_fails_that_sample(registry, fake_judge):
    fake_judge.reply = lambda body: "Score: 9" if "colour" in _text_of(body) else "Looks fine. Score: 2.5"
    scorer = registry.build("scorer", "openai_judge", url=fake_judge.url, aspect="difficulty")
    samples = _samples(5)  # sample 3 is the color_at one ("What colour ...")
    assert "colour" in samples[3].question and all("colour" not in s.question for s in samples[:3])
    with pytest.raises(ValueError, match=r"judge score 9\.0 is outside 0–5"):
        scorer.score(samples, ScoreContext())
    assert scorer.score(samples[:3], ScoreContext()) == [2.5, 2.5, 2.5]
    failures: Counter[str] = Counter()
    out = run_scorer("judge", scorer, samples, ScoreContext(), failures, policy="keep")
    assert out == [2.5, 2.5, 2.5, None, 2.5]
    assert failures == Counter({"judge": 1})


def test_scorer_rejects_unknown_aspect(registry, fake_judge):
    with pytest.raises(ValueError, match="aspect 'beauty' is not allowed"):
        registry.build("scorer", "openai_judge", url=fake_judge.url, aspect="beauty")


def test_api_key_from_named_env_var(registry, fake_judge, monkeypatch):
    monkeypatch.setenv("R1V_TEST_JUDGE_KEY", "sk-test-123")
    scorer = registry.build("scorer", "openai_judge", url=fake_judge.url, aspect="quality",
                            api_key_env="R1V_TEST_JUDGE_KEY")  # fmt: skip
    scorer.score(_samples(1), ScoreContext())
    assert len(fake_judge.headers) == 2  # GET /models and one chat
    assert all(h.get("Authorization") == "Bearer sk-test-123" for h in fake_judge.headers)


# -- reviser ---------------------------------------------------------------------------------------------


def test_reviser_keeps_chain_reaching_the_answer(registry, fake_judge):
    def reply(body):
        truth = re.search(r"The correct final answer is (.+?)\. Write", _text_of(body)).group(1)
        return f"Count again carefully. The total is {truth}. \\boxed{{{truth}}}"

    fake_judge.reply = reply
    reviser = registry.build("reviser", "openai_judge", url=fake_judge.url)
    samples = _samples(4)
    wrong = ["I think it is 17. \\boxed{17}"] * 4
    out = reviser.revise(samples, wrong, ScoreContext())
    assert out == [f"Count again carefully. The total is {s.answer}." for s in samples]
    texts = sorted(_text_of(b) for b in fake_judge.bodies)
    assert all("A student reasoned:\nI think it is 17." in t for t in texts)
    assert all(b["messages"][0]["content"][0]["type"] == "image_url" for b in fake_judge.bodies)


def test_reviser_drops_wrong_answer_and_uses_think_split(registry, fake_judge):
    def reply(body):
        if "colour" in _text_of(body):
            return "The shape looks purple. \\boxed{purple}"  # wrong: the truth is a real colour
        truth = re.search(r"The correct final answer is (.+?)\. Write", _text_of(body)).group(1)
        return f"Step one. Step two.</think>\n\n\\boxed{{{truth}}}"

    fake_judge.reply = reply
    reviser = registry.build("reviser", "openai_judge", url=fake_judge.url, workers=2)
    samples = _samples(4)
    out = reviser.revise(samples, ["x"] * 4, ScoreContext())
    assert out == ["Step one. Step two.", "Step one. Step two.", "Step one. Step two.", None]


# -- endpoint errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scorer", "reviser"])
def test_unreachable_endpoint_fails_fast(registry, kind):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(JudgeError) as e:
        registry.build(kind, "openai_judge", url=url)
    assert time.monotonic() - start < 3.0
    msg = str(e.value)
    assert url in msg and "unreachable" in msg and "\n" not in msg


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://example.com/v1", ""])
def test_non_http_url(registry, url):
    with pytest.raises(JudgeError, match="is not an http"):
        registry.build("scorer", "openai_judge", url=url)


def test_unauthorized_mentions_api_key_env(registry, fake_judge):
    fake_judge.models_status = 401
    with pytest.raises(JudgeError) as e:
        registry.build("reviser", "openai_judge", url=fake_judge.url)
    msg = str(e.value)
    assert "HTTP 401" in msg and "api_key_env" in msg and fake_judge.url in msg
    assert fake_judge.bodies == []  # nothing was asked


def test_models_404_still_counts_as_up_but_500_does_not(fake_judge):
    ChatEndpoint(fake_judge.url + "/extra", "m").check()  # /v1/extra/models -> 404: the server is there
    fake_judge.models_status = 503
    with pytest.raises(JudgeError, match="answered HTTP 503 to GET /models"):
        ChatEndpoint(fake_judge.url, "m").check()


def test_chat_retries_a_500_then_succeeds(fake_judge):
    fake_judge.chat_failures = 1
    fake_judge.reply = lambda body: "fine"
    endpoint = ChatEndpoint(fake_judge.url, "m", api_key_env=None, max_retries=2)
    assert endpoint.chat([{"role": "user", "content": "hi"}]) == "fine"
    assert fake_judge.paths == ["POST /v1/chat/completions"] * 2
    assert fake_judge.bodies[0] == fake_judge.bodies[1]
    assert fake_judge.bodies[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_chat_gives_up_after_retries(fake_judge):
    fake_judge.chat_failures = 10
    endpoint = ChatEndpoint(fake_judge.url, "m", api_key_env=None, max_retries=1)
    with pytest.raises(JudgeError, match="HTTP 500 on /chat/completions"):
        endpoint.chat([{"role": "user", "content": "hi"}])
    assert len(fake_judge.bodies) == 2


def test_chat_does_not_retry_client_errors(fake_judge):
    endpoint = ChatEndpoint(fake_judge.url + "/nope", "m", api_key_env=None)
    with pytest.raises(JudgeError, match="HTTP 404 on /chat/completions"):
        endpoint.chat([{"role": "user", "content": "hi"}])
    assert len(fake_judge.bodies) == 1


def test_chat_reply_not_a_completion(fake_judge):
    fake_judge.reply = lambda body: None  # content null -> ""
    endpoint = ChatEndpoint(fake_judge.url, "m", api_key_env=None)
    assert endpoint.chat([{"role": "user", "content": "hi"}]) == ""


def test_chat_non_json_reply_is_a_judge_error(fake_judge):
    fake_judge.chat_raw = b"<html>not an API</html>"
    endpoint = ChatEndpoint(fake_judge.url, "m", api_key_env=None, max_retries=0)
    with pytest.raises(JudgeError, match="did not answer JSON"):
        endpoint.chat([{"role": "user", "content": "hi"}])
