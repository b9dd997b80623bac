"""The official `openai` Python SDK against the gateway, one model per wire format.

Run by tests/e2e/sdk.test.mjs, which starts the mock provider and the gateway
and puts a routing config with these public models:

- chat: `sdk-openai`, `sdk-anthropic`, `sdk-gemini`, `sdk-bedrock`,
  `sdk-vertex-gemini`, `sdk-vertex-claude`, `sdk-workers-ai` (the mock
  provider in each wire format and on each regional provider kind, answering
  SDK_TEXT) and the built-in `demo`;
- tools: `sdk-<format>-tools` for each of those (two parallel calls,
  `{"city": "Paris", "call": i}`);
- embeddings: `sdk-emb-openai`, `sdk-emb-gemini`, `sdk-emb-workers-ai`,
  `demo`, and `sdk-emb-anthropic` (which must be refused).

Environment: GATEWAY_URL (required), GATEWAY_KEY (default sk-test-1),
MOCK_URL (the mock provider, to read what it received; optional).

Standard library and `openai` only: `python3 -m unittest`.
"""

import json
import os
import unittest
import urllib.request

import openai
from openai import OpenAI

SDK_TEXT = "Hello from the SDK check"
FORMATS = (
    "openai",
    "anthropic",
    "gemini",
    "bedrock",
    "vertex-gemini",
    "vertex-claude",
    "workers-ai",
)
CHAT_MODELS = {f: f"sdk-{f}" for f in FORMATS} | {"demo": "demo"}
EMBEDDING_MODELS = {
    "openai": "sdk-emb-openai",
    "gemini": "sdk-emb-gemini",
    "workers-ai": "sdk-emb-workers-ai",
    "demo": "demo",
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]


def expected_text(fmt, prompt):
    """What each chat model answers to `prompt`."""
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


class GatewayTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = OpenAI(
            base_url=os.environ["GATEWAY_URL"].rstrip("/") + "/v1",
            api_key=os.environ.get("GATEWAY_KEY", "sk-test-1"),
            max_retries=0,
            timeout=30,
        )


class ChatTest(GatewayTest):
    def test_completion_and_usage(self):
        for fmt, model in CHAT_MODELS.items():
            with self.subTest(fmt=fmt):
                resp = self.client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "ping"}]
                )
                choice = resp.choices[0]
                self.assertEqual(choice.message.role, "assistant")
                self.assertEqual(choice.message.content, expected_text(fmt, "ping"))
                self.assertEqual(choice.finish_reason, "stop")
                self.assertGreater(resp.usage.prompt_tokens, 0)
                self.assertGreater(resp.usage.completion_tokens, 0)
                self.assertEqual(
                    resp.usage.total_tokens,
                    resp.usage.prompt_tokens + resp.usage.completion_tokens,
                )

    def test_stream_concatenates_and_reports_usage_only_when_asked(self):
        for fmt, model in CHAT_MODELS.items():
            messages = [{"role": "user", "content": "pong"}]
            with self.subTest(fmt=fmt, usage=False):
                chunks = list(
                    self.client.chat.completions.create(model=model, messages=messages, stream=True)
                )
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                self.assertEqual(text, expected_text(fmt, "pong"))
                self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
                self.assertTrue(all(c.usage is None for c in chunks))
                finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
                self.assertEqual([f for f in finishes if f], ["stop"])
            with self.subTest(fmt=fmt, usage=True):
                chunks = list(
                    self.client.chat.completions.create(
                        model=model,
                        messages=messages,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                usage = chunks[-1].usage
                self.assertIsNotNone(usage)
                self.assertEqual(chunks[-1].choices, [])
                self.assertGreater(usage.completion_tokens, 0)
                self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)

    def test_parallel_tool_calls(self):
        for fmt in FORMATS:
            model = f"sdk-{fmt}-tools"
            messages = [{"role": "user", "content": "Weather and time in Paris?"}]
            with self.subTest(fmt=fmt, stream=False):
                resp = self.client.chat.completions.create(
                    model=model, messages=messages, tools=TOOLS
                )
                self.assert_tool_calls(resp.choices[0])
            with self.subTest(fmt=fmt, stream=True):
                # The SDK's own accumulator: deltas must follow OpenAI's rules
                # (index, id and name on a call's first delta) to add up.
                with self.client.chat.completions.stream(
                    model=model, messages=messages, tools=TOOLS
                ) as stream:
                    for _ in stream:
                        pass
                    final = stream.get_final_completion()
                self.assert_tool_calls(final.choices[0])

    def assert_tool_calls(self, choice):
        self.assertEqual(choice.finish_reason, "tool_calls")
        calls = choice.message.tool_calls
        self.assertEqual(len(calls), 2)
        self.assertEqual(len({c.id for c in calls}), 2)
        for i, call in enumerate(calls):
            self.assertEqual(call.type, "function")
            self.assertEqual(call.function.name, TOOLS[i]["function"]["name"])
            self.assertEqual(json.loads(call.function.arguments), {"city": "Paris", "call": i})

    def test_errors_are_the_sdks_exceptions(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            self.client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
        self.assertEqual(caught.exception.code, "model_not_found")
        bad_key = OpenAI(base_url=str(self.client.base_url), api_key="sk-wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad_key.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "x"}]
            )


class EmbeddingsTest(GatewayTest):
    def test_default_encoding_is_base64_underneath_and_decodes_to_floats(self):
        inputs = ["first text", "second text"]
        for fmt, model in EMBEDDING_MODELS.items():
            with self.subTest(fmt=fmt):
                default = self.client.embeddings.create(model=model, input=inputs)
                floats = self.client.embeddings.create(
                    model=model, input=inputs, encoding_format="float"
                )
                self.assertEqual(default.object, "list")
                self.assertEqual([d.index for d in default.data], [0, 1])
                self.assertGreater(default.usage.prompt_tokens, 0)
                self.assertEqual(default.usage.total_tokens, default.usage.prompt_tokens)
                for got, want in zip(default.data, floats.data):
                    self.assertIsInstance(got.embedding, list)
                    self.assertEqual(len(got.embedding), len(want.embedding))
                    self.assertGreater(len(got.embedding), 0)
                    for a, b in zip(got.embedding, want.embedding):
                        # base64 carries float32: about seven significant digits.
                        self.assertAlmostEqual(a, b, delta=1e-6 * max(1.0, abs(b)))
                self.assertNotEqual(default.data[0].embedding, default.data[1].embedding)
                single = self.client.embeddings.create(model=model, input=inputs[0])
                self.assertEqual(len(single.data), 1)
                self.assertEqual(single.data[0].embedding, default.data[0].embedding)

    def test_the_sdk_asked_the_openai_target_for_base64(self):
        if not os.environ.get("MOCK_URL"):
            self.skipTest("MOCK_URL not set")
        before = len(mock_requests())
        self.client.embeddings.create(model=EMBEDDING_MODELS["openai"], input="x")
        seen = [r for r in mock_requests()[before:] if r["format"] == "embeddings"]
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0]["body"]["encoding_format"], "base64")

    def test_a_model_without_embeddings_is_a_bad_request_naming_model(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.embeddings.create(model="sdk-emb-anthropic", input="x")
        self.assertEqual(caught.exception.param, "model")
        self.assertIn("does not support embeddings", caught.exception.message)


if __name__ == "__main__":
    unittest.main()
