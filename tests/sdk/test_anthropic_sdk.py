"""The official `anthropic` Python SDK against the gateway's `/v1/messages`,
one model per wire format.

Run by tests/e2e/sdk.test.mjs, which starts the mock provider and the gateway
and puts a routing config with these public models:

- text: `sdk-openai`, `sdk-anthropic`, `sdk-gemini` (the mock provider in each
  wire format, answering SDK_TEXT) and the built-in `demo`;
- a tool loop: `sdk-openai-loop`, `sdk-anthropic-loop`, `sdk-gemini-loop`
  (one call, `{"city": "Paris", "call": 0}`, until a tool result arrives; then
  the text `Tool result: <it>`);
- errors: `sdk-limited` (the target answers 429), `sdk-overloaded` (529);
- `sdk-failover`: an Anthropic target answering 503, then a healthy one.

Environment: GATEWAY_URL (required), GATEWAY_KEY (default sk-test-1),
MOCK_URL (the mock provider, to read what it received; optional). The SDK
sends the key as `x-api-key`, as Claude Code does with ANTHROPIC_API_KEY.

Standard library and `anthropic` only: `python3 -m unittest`.
"""

import base64
import json
import os
import struct
import unittest
import urllib.request
import zlib

import anthropic
from anthropic import Anthropic

SDK_TEXT = "Hello from the SDK check"
FORMATS = ("openai", "anthropic", "gemini")
TEXT_MODELS = {f: f"sdk-{f}" for f in FORMATS} | {"demo": "demo"}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def expected_text(fmt, prompt):
    """What each text model answers to `prompt`."""
    if fmt == "demo":
        return f'Hello from the gateway\'s built-in demo model. You said: "{prompt}"'
    return SDK_TEXT


def mock_requests():
    """What the mock provider received, oldest first (empty without MOCK_URL)."""
    url = os.environ.get("MOCK_URL")
    if not url:
        return []
    with urllib.request.urlopen(f"{url}/_control/requests") as resp:
        return json.load(resp)


def png_1x1():
    """A valid one-pixel PNG, made here (no files, no network)."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The SDK appends /v1/messages itself, as it does for Claude Code's
        # ANTHROPIC_BASE_URL.
        cls.client = Anthropic(
            base_url=os.environ["GATEWAY_URL"].rstrip("/"),
            api_key=os.environ.get("GATEWAY_KEY", "sk-test-1"),
            max_retries=0,
            timeout=30,
        )


class MessagesTest(GatewayTest):
    def test_create(self):
        for fmt, model in TEXT_MODELS.items():
            with self.subTest(fmt=fmt):
                msg = self.client.messages.create(
                    model=model, max_tokens=100, messages=[{"role": "user", "content": "ping"}]
                )
                self.assertEqual(msg.type, "message")
                self.assertEqual(msg.role, "assistant")
                self.assertTrue(msg.id.startswith("msg_"))
                self.assertEqual(len(msg.content), 1)
                self.assertEqual(msg.content[0].type, "text")
                self.assertEqual(msg.content[0].text, expected_text(fmt, "ping"))
                self.assertEqual(msg.stop_reason, "end_turn")
                self.assertGreater(msg.usage.input_tokens, 0)
                self.assertGreater(msg.usage.output_tokens, 0)

    def test_stream(self):
        for fmt, model in TEXT_MODELS.items():
            with self.subTest(fmt=fmt):
                with self.client.messages.stream(
                    model=model, max_tokens=100, messages=[{"role": "user", "content": "pong"}]
                ) as stream:
                    text = "".join(stream.text_stream)
                    final = stream.get_final_message()
                self.assertEqual(text, expected_text(fmt, "pong"))
                self.assertEqual(final.content[0].text, text)
                self.assertEqual(final.stop_reason, "end_turn")
                self.assertGreater(final.usage.output_tokens, 0)

    def test_raw_stream_events(self):
        events = list(
            self.client.messages.create(
                model="sdk-anthropic",
                max_tokens=100,
                stream=True,
                messages=[{"role": "user", "content": "x"}],
            )
        )
        kinds = [e.type for e in events]
        self.assertEqual(kinds[0], "message_start")
        self.assertEqual(kinds[-2:], ["message_delta", "message_stop"])
        self.assertIn("content_block_delta", kinds)

    def test_two_turn_tool_loop_with_input_json_delta(self):
        for fmt in FORMATS:
            model = f"sdk-{fmt}-loop"
            question = {"role": "user", "content": "Weather in Paris?"}
            with self.subTest(fmt=fmt):
                # Turn one, streamed: the SDK accumulates input_json_delta.
                with self.client.messages.stream(
                    model=model, max_tokens=200, tools=TOOLS, messages=[question]
                ) as stream:
                    partials = [e.partial_json for e in stream if e.type == "input_json"]
                    first = stream.get_final_message()
                self.assertTrue(partials, "arguments arrived as input_json_delta")
                self.assertEqual(first.stop_reason, "tool_use")
                calls = [b for b in first.content if b.type == "tool_use"]
                self.assertEqual(len(calls), 1)
                call = calls[0]
                self.assertEqual(call.name, "get_weather")
                self.assertEqual(call.input, {"city": "Paris", "call": 0})
                # Turn two: the result goes back; the answer quotes it.
                second = self.client.messages.create(
                    model=model,
                    max_tokens=200,
                    tools=TOOLS,
                    messages=[
                        question,
                        {"role": "assistant", "content": first.content},
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
                            ],
                        },
                    ],
                )
                self.assertEqual(second.stop_reason, "end_turn")
                self.assertEqual(second.content[0].text, "Tool result: sunny")

    def test_image_input(self):
        content = [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": png_1x1()},
            },
            {"type": "text", "text": "What is this?"},
        ]
        for fmt in FORMATS:
            with self.subTest(fmt=fmt):
                msg = self.client.messages.create(
                    model=f"sdk-{fmt}", max_tokens=100, messages=[{"role": "user", "content": content}]
                )
                self.assertEqual(msg.content[0].text, SDK_TEXT)

    def test_a_503_on_the_first_target_is_invisible_to_a_stream(self):
        with self.client.messages.stream(
            model="sdk-failover", max_tokens=100, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            text = "".join(stream.text_stream)
            response = stream.response
        self.assertEqual(text, SDK_TEXT)
        self.assertEqual(response.headers.get("x-gateway-attempts"), "2")

    def test_count_tokens(self):
        for model in ("sdk-anthropic", "sdk-openai"):
            with self.subTest(model=model):
                count = self.client.messages.count_tokens(
                    model=model, messages=[{"role": "user", "content": "Count these words"}]
                )
                self.assertGreater(count.input_tokens, 0)


class ErrorsTest(GatewayTest):
    def ask(self, client, model):
        return client.messages.create(
            model=model, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )

    def test_a_bad_key_is_an_authentication_error(self):
        bad = Anthropic(base_url=str(self.client.base_url), api_key="sk-wrong", max_retries=0)
        with self.assertRaises(anthropic.AuthenticationError) as caught:
            self.ask(bad, "sdk-anthropic")
        self.assertEqual(caught.exception.status_code, 401)
        self.assertEqual(caught.exception.body["error"]["type"], "authentication_error")

    def test_a_rate_limit_is_a_rate_limit_error(self):
        with self.assertRaises(anthropic.RateLimitError) as caught:
            self.ask(self.client, "sdk-limited")
        self.assertEqual(caught.exception.body["error"]["type"], "rate_limit_error")

    def test_an_overload_is_an_overloaded_error(self):
        with self.assertRaises(anthropic.OverloadedError) as caught:
            self.ask(self.client, "sdk-overloaded")
        self.assertEqual(caught.exception.status_code, 529)

    def test_an_unknown_model_is_not_found(self):
        with self.assertRaises(anthropic.NotFoundError):
            self.ask(self.client, "no-such-model")

    def test_a_missing_max_tokens_is_a_bad_request(self):
        with self.assertRaises(anthropic.BadRequestError) as caught:
            self.client.messages.create(
                model="sdk-anthropic",
                messages=[{"role": "user", "content": "x"}],
                max_tokens=anthropic.NOT_GIVEN,
            )
        self.assertEqual(caught.exception.body["error"]["type"], "invalid_request_error")


class PassThroughTest(GatewayTest):
    def test_headers_reach_an_anthropic_target_as_sent(self):
        if not os.environ.get("MOCK_URL"):
            self.skipTest("MOCK_URL not set")
        before = len(mock_requests())
        self.client.messages.create(
            model="sdk-anthropic",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
        )
        seen = [r for r in mock_requests()[before:] if r["format"] == "anthropic"]
        self.assertEqual(len(seen), 1)
        # The version the SDK sent, whichever it is, and not the gateway's default.
        sent_version = self.client.default_headers["anthropic-version"]
        self.assertEqual(seen[0]["headers"]["anthropic-version"], sent_version)
        self.assertEqual(seen[0]["headers"]["anthropic-beta"], "context-1m-2025-08-07")


if __name__ == "__main__":
    unittest.main()
