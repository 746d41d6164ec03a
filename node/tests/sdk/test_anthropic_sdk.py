"""The official `anthropic` SDK against the gateway's /v1/messages."""

import anthropic
import pytest

MOCK_ANSWER = "Hi! This is Meridian's mock model. You said: Hello Claude"
FAKE_ANSWER = "Hello from the fake upstream."


@pytest.mark.parametrize("model,expected", [("mock-chat", MOCK_ANSWER), ("claude", FAKE_ANSWER), ("gpt-4o", FAKE_ANSWER)])
def test_messages(claude, model, expected):
    message = claude.messages.create(
        model=model, max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": "Hello Claude"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == expected
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize("model,expected", [("mock-chat", MOCK_ANSWER), ("claude", FAKE_ANSWER), ("gpt-4o", FAKE_ANSWER)])
def test_messages_stream(claude, model, expected):
    with claude.messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "Hello Claude"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected
    assert final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_tool_use(claude):
    message = claude.messages.create(
        model="claude", max_tokens=100,
        tools=[{"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert message.stop_reason == "tool_use"
    tool = next(b for b in message.content if b.type == "tool_use")
    assert tool.name == "get_weather" and tool.input == {"city": "Paris"}


def test_errors_surface_as_sdk_exceptions(claude, gateway):
    with pytest.raises(anthropic.RateLimitError) as e:
        claude.messages.create(model="mock-ratelimited-messages", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429

    bad_key = anthropic.Anthropic(api_key="sk-wrong", base_url=gateway, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad_key.messages.create(model="mock-chat", max_tokens=5, messages=[{"role": "user", "content": "x"}])
