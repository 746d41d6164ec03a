//! What a call costs. Prices are integers in picodollars (10⁻¹² USD) per token and
//! costs are computed in integer arithmetic, so the cost header is exact and the
//! spend counters (which must never hold floats) can take the value as is.

use std::fmt;

use crate::wire::openai::Usage;

/// USD 10⁻¹² per token.
pub type PicoUsd = u64;

/// Picodollars in a dollar.
pub const PICO_PER_USD: u128 = 1_000_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: PicoUsd,
    pub output: PicoUsd,
    /// Input tokens read from the provider's prompt cache; `input` when absent.
    pub cache_read: Option<PicoUsd>,
    /// Input tokens written to the prompt cache (Anthropic); `input` when absent.
    pub cache_write: Option<PicoUsd>,
}

/// A cost in picodollars. Displays as USD with all significant digits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost(pub u128);

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / PICO_PER_USD;
        let frac = self.0 % PICO_PER_USD;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        // Twelve digits: a picodollar is 10⁻¹² USD.
        let digits = format!("{frac:012}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl Price {
    /// Converts LiteLLM's per-token USD floats (`input_cost_per_token: 2.5e-06`).
    pub fn from_usd_per_token(input: f64, output: f64) -> Option<Self> {
        Some(Self {
            input: usd_to_pico(input)?,
            output: usd_to_pico(output)?,
            cache_read: None,
            cache_write: None,
        })
    }

    pub fn cost(&self, usage: &Usage) -> Cost {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage
            .cache_creation_tokens
            .min(usage.prompt_tokens - cached);
        let plain = usage.prompt_tokens - cached - written;
        let total = plain as u128 * self.input as u128
            + cached as u128 * self.cache_read.unwrap_or(self.input) as u128
            + written as u128 * self.cache_write.unwrap_or(self.input) as u128
            + usage.completion_tokens as u128 * self.output as u128;
        Cost(total)
    }
}

/// [`PICO_PER_USD`] as a float, for the conversions below.
const PICO_PER_USD_F64: f64 = PICO_PER_USD as f64;

/// USD per token as a float → picodollars, rounded; `None` if negative or absurd.
pub fn usd_to_pico(usd: f64) -> Option<PicoUsd> {
    let pico = (usd * PICO_PER_USD_F64).round();
    (pico.is_finite() && (0.0..1e15).contains(&pico)).then_some(pico as u64)
}

/// An amount in dollars (a budget, a spend) → picodollars, rounded; a
/// negative or non-number amount is 0, a huge one saturates.
pub fn dollars_to_pico(usd: f64) -> u64 {
    // A float-to-integer `as` saturates, and takes NaN to 0.
    (usd * PICO_PER_USD_F64).round() as u64
}

/// Picodollars → dollars, for answers, logs and reports.
pub fn pico_to_dollars(pico: impl Into<u128>) -> f64 {
    pico.into() as f64 / PICO_PER_USD_F64
}

/// `$ per million tokens` → picodollars per token, for the table below.
const fn per_m(dollars_per_million_times_1000: u64) -> PicoUsd {
    // $1 per 1M tokens = 10⁻⁶ $/token = 10⁶ picodollars/token; the table is
    // written in thousandths of a dollar per million to stay integral.
    dollars_per_million_times_1000 * 1_000
}

const fn p(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Price {
    Price {
        input: per_m(input),
        output: per_m(output),
        cache_read: if cache_read == 0 {
            None
        } else {
            Some(per_m(cache_read))
        },
        cache_write: if cache_write == 0 {
            None
        } else {
            Some(per_m(cache_write))
        },
    }
}

/// Built-in prices, in thousandths of a USD per million tokens:
/// (model, input, output, cached input read, cache write). Matched by
/// [`lookup`] on the model name or its dated variants (`gpt-4o-2024-08-06`).
/// Operators override per deployment with `input_cost_per_token` and
/// `output_cost_per_token`.
const TABLE: &[(&str, Price)] = &[
    // OpenAI
    ("gpt-5", p(1_250, 10_000, 125, 0)),
    ("gpt-5-mini", p(250, 2_000, 25, 0)),
    ("gpt-5-nano", p(50, 400, 5, 0)),
    ("gpt-4.1", p(2_000, 8_000, 500, 0)),
    ("gpt-4.1-mini", p(400, 1_600, 100, 0)),
    ("gpt-4.1-nano", p(100, 400, 25, 0)),
    ("gpt-4o", p(2_500, 10_000, 1_250, 0)),
    ("gpt-4o-mini", p(150, 600, 75, 0)),
    ("gpt-4-turbo", p(10_000, 30_000, 0, 0)),
    ("gpt-4", p(30_000, 60_000, 0, 0)),
    ("gpt-3.5-turbo", p(500, 1_500, 0, 0)),
    ("o1", p(15_000, 60_000, 7_500, 0)),
    ("o1-mini", p(1_100, 4_400, 550, 0)),
    ("o3", p(2_000, 8_000, 500, 0)),
    ("o3-mini", p(1_100, 4_400, 550, 0)),
    ("o4-mini", p(1_100, 4_400, 275, 0)),
    ("text-embedding-3-small", p(20, 0, 0, 0)),
    ("text-embedding-3-large", p(130, 0, 0, 0)),
    ("text-embedding-ada-002", p(100, 0, 0, 0)),
    // Anthropic: cache reads at 0.1×, 5-minute cache writes at 1.25× input.
    ("claude-opus-4-5", p(5_000, 25_000, 500, 6_250)),
    ("claude-opus-4-1", p(15_000, 75_000, 1_500, 18_750)),
    ("claude-opus-4", p(15_000, 75_000, 1_500, 18_750)),
    ("claude-sonnet-4-5", p(3_000, 15_000, 300, 3_750)),
    ("claude-sonnet-4", p(3_000, 15_000, 300, 3_750)),
    ("claude-haiku-4-5", p(1_000, 5_000, 100, 1_250)),
    ("claude-3-7-sonnet", p(3_000, 15_000, 300, 3_750)),
    ("claude-3-5-sonnet", p(3_000, 15_000, 300, 3_750)),
    ("claude-3-5-haiku", p(800, 4_000, 80, 1_000)),
    ("claude-3-opus", p(15_000, 75_000, 1_500, 18_750)),
    ("claude-3-haiku", p(250, 1_250, 30, 300)),
    // Common open models behind OpenAI-compatible hosts (Groq list prices).
    ("llama-3.1-8b-instant", p(50, 80, 0, 0)),
    ("llama-3.3-70b-versatile", p(590, 790, 0, 0)),
    // Meridian's built-in mock models, priced so costs are visible in tests.
    ("mock", p(1_000, 2_000, 500, 0)),
];

/// Price of `model`: an exact entry, else the longest entry that `model` extends
/// at a `-` boundary (`claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`), so
/// `gpt-4o-mini-x` never matches the dearer `gpt-4o`'s longer sibling by accident.
pub fn lookup(model: &str) -> Option<Price> {
    let model = model.rsplit('/').next().unwrap_or(model);
    TABLE
        .iter()
        .filter(|(name, _)| {
            model == *name
                || model
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('@'))
        })
        .max_by_key(|(name, _)| name.len())
        .map(|(_, price)| *price)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_and_picodollars_convert_both_ways() {
        assert_eq!(dollars_to_pico(1.5), 1_500_000_000_000);
        assert_eq!(dollars_to_pico(0.000_000_000_000_4), 0, "rounded");
        assert_eq!(dollars_to_pico(0.000_000_000_000_6), 1);
        assert_eq!(dollars_to_pico(-3.0), 0);
        assert_eq!(dollars_to_pico(f64::NAN), 0);
        assert_eq!(dollars_to_pico(1e30), u64::MAX);
        assert_eq!(pico_to_dollars(2_500_000_000_000u64), 2.5);
        assert_eq!(pico_to_dollars(dollars_to_pico(12.34)), 12.34);
        assert_eq!(usd_to_pico(0.000_002_5), Some(2_500_000));
        assert_eq!(usd_to_pico(-1.0), None);
    }

    #[test]
    fn dated_variants_and_longest_match() {
        assert_eq!(lookup("gpt-4o-2024-08-06"), lookup("gpt-4o"));
        assert_eq!(lookup("gpt-4o-mini-2024-07-18").unwrap().input, per_m(150));
        assert_eq!(
            lookup("claude-3-5-sonnet-20241022").unwrap().output,
            per_m(15_000)
        );
        assert_eq!(lookup("openai/gpt-4.1-nano").unwrap().input, per_m(100));
        assert_eq!(lookup("gpt-4.5-preview"), None);
        assert_eq!(lookup("llama-unknown"), None);
    }

    #[test]
    fn cost_is_exact_with_cache_tokens() {
        // gpt-4o: 1000 prompt tokens of which 400 cached, 100 completion tokens:
        // 600 × $2.5/M + 400 × $1.25/M + 100 × $10/M = $0.0015 + $0.0005 + $0.001
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 400,
            cache_creation_tokens: 0,
        };
        let cost = lookup("gpt-4o").unwrap().cost(&usage);
        assert_eq!(cost.to_string(), "0.003");
        // Anthropic cache writes are dearer than plain input.
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 0,
            cached_tokens: 0,
            cache_creation_tokens: 1000,
        };
        assert_eq!(
            lookup("claude-3-haiku").unwrap().cost(&usage).to_string(),
            "0.0003"
        );
    }

    #[test]
    fn usd_floats_convert_and_costs_display() {
        let price = Price::from_usd_per_token(2.5e-6, 1e-5).unwrap();
        assert_eq!(price.input, 2_500_000);
        assert_eq!(Price::from_usd_per_token(-1.0, 0.0), None);
        assert_eq!(Cost(0).to_string(), "0");
        assert_eq!(Cost(1).to_string(), "0.000000000001");
        assert_eq!(Cost(3_500_000_000_000).to_string(), "3.5");
    }
}
