"""Runtime specs, the endpoint guard, and the Ollama /api/chat contract on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance.errors import ConfigError, NetworkPolicyError
from appliance.netguard import check_endpoint
from appliance.runtimes import Sampling, make_runtime, parse_spec


@pytest.mark.parametrize("spec, expected", [
    ("embedded", {"kind": "llamacpp", "model": "embedded"}),
    ("llamacpp:/m/x.gguf+lora=/a/l.gguf", {"kind": "llamacpp", "model": "/m/x.gguf", "lora": "/a/l.gguf"}),
    ("hf:embedded", {"kind": "hf", "model": "embedded", "adapter": None}),
    ("ollama:qwen2.5:3b", {"kind": "ollama", "model": "qwen2.5:3b", "base_url": "http://127.0.0.1:11434"}),
    ("ollama:qwen2.5:3b@http://localhost:9999", {"kind": "ollama", "model": "qwen2.5:3b", "base_url": "http://localhost:9999"}),
    ("openai:m@http://127.0.0.1:8080/v1#completions",
     {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:8080/v1", "api": "completions"}),
])
def test_parse_spec_forms(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("vllm:foo", "unknown runtime kind 'vllm'"),
    ("openai:model", "needs a server URL"),
    ("ollama", "needs KIND:MODEL"),
])
def test_parse_spec_rejects(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/v1", "http://localhost:11434",
                                 "http://[::1]:8000", "http://127.5.0.1"])
def test_endpoint_loopback_allowed(url, monkeypatch):
    monkeypatch.delenv("RECKON_ALLOWED_HOSTS", raising=False)
    assert check_endpoint(url) == url


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080", "https://api.example.com/v1",
                                 "http://169.254.169.254/latest", "http://192.168.1.2:11434"])
def test_endpoint_outside_rejected(url, monkeypatch):
    monkeypatch.delenv("RECKON_ALLOWED_HOSTS", raising=False)
    with pytest.raises(NetworkPolicyError, match="neither loopback nor an allowed on-prem host"):
        check_endpoint(url)


def test_endpoint_allowed_host_list(monkeypatch):
    monkeypatch.setenv("RECKON_ALLOWED_HOSTS", "gpu01.site.internal, 10.0.0.5")
    assert check_endpoint("http://10.0.0.5:8080")
    assert check_endpoint("http://GPU01.site.internal:11434")
    with pytest.raises(NetworkPolicyError):
        check_endpoint("http://10.0.0.6:8080")


def test_endpoint_bad_scheme():
    with pytest.raises(NetworkPolicyError, match="not an http"):
        check_endpoint("ftp://127.0.0.1/")


def test_runtime_refuses_outside_endpoint(monkeypatch):
    monkeypatch.delenv("RECKON_ALLOWED_HOSTS", raising=False)
    with pytest.raises(NetworkPolicyError):
        make_runtime("ollama:qwen2.5:3b@http://203.0.113.7:11434")
    with pytest.raises(NetworkPolicyError):
        make_runtime("openai:m@https://api.example.com/v1")


def test_offline_variables_set():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


class _OllamaHandler(BaseHTTPRequestHandler):
    """Speaks Ollama's documented /api/chat response shape (non-streaming)."""

    requests: list[dict] = []
    replies: list[dict] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/api/chat":
            self.send_response(404)
            self.end_headers()
            return
        type(self).requests.append(body)
        reply = type(self).replies[len(type(self).requests) - 1]
        payload = {"model": body["model"], "created_at": "2026-12-04T00:00:00Z",
                   "message": reply, "done": True, "done_reason": "stop",
                   "total_duration": 1000, "prompt_eval_count": 120, "eval_count": 12}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def ollama_server():
    _OllamaHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OllamaHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _OllamaHandler
    server.shutdown()


def test_ollama_native_tool_calls(ollama_server):
    url, handler = ollama_server
    handler.replies = [{"role": "assistant", "content": "",
                        "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}]
    runtime = make_runtime(f"ollama:qwen2.5:3b@{url}")
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    history = [{"role": "user", "content": "2+3?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c0", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}}]},
               {"role": "tool", "tool_call_id": "c0", "name": "add", "content": "{\"sum\": 1}"}]
    generation = runtime.chat(history, tools, Sampling(max_tokens=32, seed=3))
    assert generation.native_tool_calls
    assert generation.tool_calls[0].name == "add"
    assert generation.tool_calls[0].arguments == {"a": 2, "b": 3}
    assert generation.prompt_tokens == 120
    assert generation.completion_tokens == 12
    sent = handler.requests[0]
    assert sent["tools"] == tools
    assert sent["options"]["num_predict"] == 32
    assert sent["options"]["seed"] == 3
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert sent["messages"][2]["role"] == "tool"


def test_ollama_text_tool_call_fallback(ollama_server):
    url, handler = ollama_server
    handler.replies = [{"role": "assistant",
                        "content": 'Sure.\n```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```'}]
    runtime = make_runtime(f"ollama:tiny@{url}")
    generation = runtime.chat([{"role": "user", "content": "1+2"}], [], Sampling())
    assert not generation.native_tool_calls
    assert generation.tool_calls[0].arguments == {"a": 1, "b": 2}
    assert generation.content == "Sure."


def test_ollama_unreachable_is_runtime_failure():
    from appliance.runtimes import RuntimeFailure

    runtime = make_runtime("ollama:tiny@http://127.0.0.1:9")
    with pytest.raises(RuntimeFailure, match="ollama at http://127.0.0.1:9 failed"):
        runtime.chat([{"role": "user", "content": "hi"}], [], Sampling())
