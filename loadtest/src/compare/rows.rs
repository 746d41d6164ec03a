//! The systems a comparison can load, by name, in the order they run.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// One system a comparison loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowKind {
    Direct,
    /// A minimal pass-through proxy: the floor of any gateway here.
    Nginx,
    #[serde(rename = "meridian-1")]
    Meridian1,
    /// One node with its metrics off: what recording them costs.
    #[serde(rename = "meridian-1-nometrics")]
    Meridian1NoMetrics,
    MeridianRegion,
    #[serde(rename = "meridian-2regions")]
    Meridian2Regions,
    Litellm,
    Portkey,
}

impl RowKind {
    pub const ALL: [RowKind; 8] = [
        RowKind::Direct,
        RowKind::Nginx,
        RowKind::Meridian1,
        RowKind::Meridian1NoMetrics,
        RowKind::MeridianRegion,
        RowKind::Meridian2Regions,
        RowKind::Litellm,
        RowKind::Portkey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RowKind::Direct => "direct",
            RowKind::Nginx => "nginx",
            RowKind::Meridian1 => "meridian-1",
            RowKind::Meridian1NoMetrics => "meridian-1-nometrics",
            RowKind::MeridianRegion => "meridian-region",
            RowKind::Meridian2Regions => "meridian-2regions",
            RowKind::Litellm => "litellm",
            RowKind::Portkey => "portkey",
        }
    }

    pub(super) fn description(self) -> &'static str {
        match self {
            RowKind::Direct => "the fake upstream alone",
            RowKind::Nginx => "nginx as a pass-through proxy, one worker, keep-alive upstream",
            RowKind::Meridian1 => "one Meridian node",
            RowKind::Meridian1NoMetrics => {
                "one Meridian node with its metrics off (meridian.disable_metrics), to price them"
            }
            RowKind::MeridianRegion => "a Meridian region of three nodes, load spread over them",
            RowKind::Meridian2Regions => {
                "two Meridian regions of one node each, load spread over both"
            }
            RowKind::Litellm => "the LiteLLM proxy, no database",
            RowKind::Portkey => "the Portkey OSS gateway on node, routed by headers",
        }
    }

    pub(super) fn is_meridian(self) -> bool {
        matches!(
            self,
            RowKind::Meridian1
                | RowKind::Meridian1NoMetrics
                | RowKind::MeridianRegion
                | RowKind::Meridian2Regions
        )
    }

    /// Parses a comma-separated list (`direct,meridian-1`), in run order,
    /// each once.
    pub fn parse_list(text: &str) -> Result<Vec<RowKind>, Error> {
        let mut rows = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let row: RowKind = name.parse()?;
            if !rows.contains(&row) {
                rows.push(row);
            }
        }
        if rows.is_empty() {
            return Err(Error::InvalidOption("no rows named".into()));
        }
        rows.sort_unstable();
        Ok(rows)
    }
}

impl FromStr for RowKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        RowKind::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = RowKind::ALL.iter().map(|r| r.name()).collect();
                Error::InvalidOption(format!("unknown row {s:?} (known: {})", known.join(", ")))
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn rows_parse_in_run_order() {
        assert_eq!(
            RowKind::parse_list("meridian-1, direct,meridian-1").unwrap(),
            vec![RowKind::Direct, RowKind::Meridian1]
        );
        assert!(RowKind::parse_list("direct,envoy").is_err());
        // Run order is the floor first, then the gateways, then the peers.
        assert_eq!(
            RowKind::parse_list("portkey,meridian-1,nginx,direct").unwrap(),
            vec![
                RowKind::Direct,
                RowKind::Nginx,
                RowKind::Meridian1,
                RowKind::Portkey
            ]
        );
        assert!(RowKind::parse_list(" , ").is_err());
        for row in RowKind::ALL {
            assert_eq!(row.name().parse::<RowKind>().unwrap(), row);
            assert_eq!(
                serde_json::to_value(row).unwrap(),
                serde_json::Value::from(row.name())
            );
        }
    }
}
