"""The official `openai` SDK against a running gateway."""

import openai
import pytest

MOCK_ANSWER = "Hi! This is Meridian's mock model. You said: Hello SDK"
FAKE_ANSWER = "Hello from the fake upstream."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_chat(oai):
    raw = oai.chat.completions.with_raw_response.create(
        model="mock-chat", messages=[{"role": "user", "content": "Hello SDK"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == MOCK_ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert raw.headers["x-meridian-model-group"] == "mock-chat"
    assert raw.headers["x-meridian-region"] == "test"
    assert float(raw.headers["x-meridian-response-cost"]) > 0


@pytest.mark.parametrize("model,expected", [("mock-chat", MOCK_ANSWER), ("gpt-4o", FAKE_ANSWER), ("claude", FAKE_ANSWER)])
def test_chat_stream_with_usage(oai, model, expected):
    stream = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello SDK"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_without_usage_has_no_usage_chunk(oai):
    chunks = list(oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == FAKE_ANSWER


@pytest.mark.parametrize("model", ["gpt-4o", "claude"])
def test_tool_calls(oai, model):
    completion = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL])
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'


@pytest.mark.parametrize("model,dims", [("mock-embedding", 16), ("text-embedding-3-small", 4)])
def test_embeddings(oai, model, dims):
    # The SDK asks for base64 by default and decodes it itself.
    result = oai.embeddings.create(model=model, input=["alpha", "beta"] if model == "mock-embedding" else "alpha")
    assert len(result.data[0].embedding) == dims
    assert all(isinstance(x, float) for x in result.data[0].embedding)


def test_legacy_completions(oai):
    result = oai.completions.create(model="mock-chat", prompt="Once upon", max_tokens=5)
    assert result.choices[0].text == "This is Meridian's mock completion"
    assert result.choices[0].finish_reason == "length"


def test_models(oai):
    ids = {m.id for m in oai.models.list()}
    assert ids == {"mock-chat", "mock-embedding", "mock-ratelimited", "mock-ratelimited-messages", "gpt-4o", "text-embedding-3-small", "claude"}


def test_errors_surface_as_sdk_exceptions(oai, gateway):
    once = oai.with_options(max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        once.chat.completions.create(model="mock-ratelimited", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 429
    assert "Mock error 429" in e.value.message
    # The 429 cooled the deployment down: the next call fails fast, with
    # LiteLLM's message and when to come back.
    with pytest.raises(openai.RateLimitError) as e:
        once.chat.completions.create(model="mock-ratelimited", messages=[{"role": "user", "content": "x"}])
    assert "No deployments available for selected model" in e.value.message
    assert int(e.value.response.headers["retry-after"]) >= 1

    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["param"] == "model"

    bad_key = openai.OpenAI(api_key="sk-wrong", base_url=f"{gateway}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
