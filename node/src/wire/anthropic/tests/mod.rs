//! Tests of the Anthropic translation, over JSON values so each case reads
//! as the bodies on the wire.

mod read_request;
mod response;
mod stream;
mod write_request;

use serde_json::Value;

use super::*;
use crate::wire::openai::Usage;

proptest::proptest! {
    /// One mapping, both ways: Anthropic's counters become the gateway's
    /// usage (what is billed) and come back unchanged for an Anthropic
    /// client, prompt-cache writes included.
    #[test]
    fn anthropic_usage_survives_the_round_trip(
        input in 0u64..1_000_000_000,
        output in 0u64..1_000_000_000,
        read in 0u64..1_000_000_000,
        written in 0u64..1_000_000_000,
    ) {
        let theirs = AnthropicUsage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: read,
            cache_creation_input_tokens: written,
        };
        let usage = theirs.to_usage();
        proptest::prop_assert_eq!(usage.prompt_tokens, input + read + written);
        proptest::prop_assert_eq!(AnthropicUsage::from_usage(&usage), theirs);
    }
}

/// Anthropic → chat over JSON: the message parsed, translated, written.
fn to_chat_json(resp: Value, model: &str, created: u64) -> Result<(Value, Usage), String> {
    let message: Message = serde_json::from_value(resp).map_err(|e| e.to_string())?;
    let (chat, usage) = super::response::to_chat(message, model, created)?;
    Ok((serde_json::to_value(chat).unwrap(), usage))
}

/// chat → Anthropic over JSON.
fn from_chat_json(chat: Value, model: &str, usage: Option<Usage>) -> Result<Value, String> {
    let chat = serde_json::from_value(chat).map_err(|e| e.to_string())?;
    super::response::from_chat(chat, model, usage).map(|m| serde_json::to_value(m).unwrap())
}
