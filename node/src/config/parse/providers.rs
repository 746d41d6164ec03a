//! Providers by their LiteLLM prefix: which adapter serves them, their
//! default upstream and the variable their key is read from.

use crate::config::ProviderKind;

pub(super) const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

pub(super) struct ProviderSpec {
    pub(super) kind: ProviderKind,
    pub(super) default_base: Option<&'static str>,
    pub(super) key_env: Option<&'static str>,
    /// Ollama's OpenAI-compatible API lives under `/v1` of its server URL.
    pub(super) append_v1: bool,
    pub(super) completion_only: bool,
}

/// Providers by their LiteLLM prefix. OpenAI-compatible hosts are the OpenAI
/// adapter with another base URL.
pub(super) fn provider_spec(prefix: &str) -> Option<ProviderSpec> {
    let openai = |base: Option<&'static str>, key: Option<&'static str>| ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base: base,
        key_env: key,
        append_v1: false,
        completion_only: false,
    };
    Some(match prefix {
        "openai" => openai(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY")),
        "text-completion-openai" => ProviderSpec {
            completion_only: true,
            ..openai(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY"))
        },
        "hosted_vllm" | "openai_like" | "lm_studio" | "llamafile" => openai(None, None),
        "ollama" | "ollama_chat" => ProviderSpec {
            append_v1: true,
            ..openai(Some("http://localhost:11434"), None)
        },
        "groq" => openai(Some("https://api.groq.com/openai/v1"), Some("GROQ_API_KEY")),
        "together_ai" => openai(
            Some("https://api.together.xyz/v1"),
            Some("TOGETHERAI_API_KEY"),
        ),
        "deepseek" => openai(
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
        ),
        "mistral" => openai(Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_KEY")),
        "fireworks_ai" => openai(
            Some("https://api.fireworks.ai/inference/v1"),
            Some("FIREWORKS_AI_API_KEY"),
        ),
        "openrouter" => openai(
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
        ),
        "xai" => openai(Some("https://api.x.ai/v1"), Some("XAI_API_KEY")),
        "deepinfra" => openai(
            Some("https://api.deepinfra.com/v1/openai"),
            Some("DEEPINFRA_API_KEY"),
        ),
        "perplexity" => openai(
            Some("https://api.perplexity.ai"),
            Some("PERPLEXITYAI_API_KEY"),
        ),
        "azure" => ProviderSpec {
            kind: ProviderKind::Azure,
            default_base: None,
            key_env: Some("AZURE_API_KEY"),
            append_v1: false,
            completion_only: false,
        },
        "anthropic" => ProviderSpec {
            kind: ProviderKind::Anthropic,
            default_base: Some("https://api.anthropic.com"),
            key_env: Some("ANTHROPIC_API_KEY"),
            append_v1: false,
            completion_only: false,
        },
        "mock" => ProviderSpec {
            kind: ProviderKind::Mock,
            default_base: Some("mock://"),
            key_env: None,
            append_v1: false,
            completion_only: false,
        },
        _ => return None,
    })
}
