//! The `/sync` position:
//! `s<events>[_<ephemeral>[_<account data>[_<e2e>[_<presence>]]]]`,
//! one part per stream a sync follows. A token from before a part existed
//! still works: the missing position reads as "none yet" and that stream's
//! data comes in full once. Parts after those known here are ignored, so a
//! token from a newer weft does not fail on an older one. A part may also
//! be empty (`s12____7`): that stream's position is unknown, as if the part
//! were missing, while later ones are given (`/events` and `/initialSync`
//! tokens, which do not cover every stream, are written so).

use std::fmt;

use crate::storage::StreamOrdering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncToken {
    /// The room event stream.
    pub stream: StreamOrdering,
    /// Typing and receipts.
    pub ephemeral: Option<i64>,
    /// Account data.
    pub account_data: Option<i64>,
    /// Device lists and to-device messages.
    pub e2e: Option<i64>,
    /// Presence.
    pub presence: Option<i64>,
}

impl SyncToken {
    /// `None` for a token that is not one (a part that is not a number).
    pub fn parse(token: &str) -> Option<SyncToken> {
        // Empty parts come only before a given one (as they are written).
        if token.ends_with('_') {
            return None;
        }
        let mut parts = token.strip_prefix('s')?.split('_');
        let stream = parts.next()?.parse().ok()?;
        // Missing: `None`; empty: `Some(None)`; a number: `Some(Some(n))`;
        // anything else makes the token invalid.
        let mut next = || {
            parts.next().map(|p| {
                if p.is_empty() {
                    Some(None)
                } else {
                    p.parse::<i64>().ok().map(Some)
                }
            })
        };
        let ephemeral = next().unwrap_or(Some(None))?;
        let account_data = next().unwrap_or(Some(None))?;
        let e2e = next().unwrap_or(Some(None))?;
        let presence = next().unwrap_or(Some(None))?;
        Some(SyncToken {
            stream,
            ephemeral,
            account_data,
            e2e,
            presence,
        })
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.stream)?;
        // Parts up to the last known one; unknown ones before it empty.
        let parts = [self.ephemeral, self.account_data, self.e2e, self.presence];
        let known = parts.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        for part in &parts[..known] {
            match part {
                Some(position) => write!(f, "_{position}")?,
                None => write!(f, "_")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SyncToken;

    #[test]
    fn tokens_of_every_age_parse() {
        let full = SyncToken::parse("s12_3_4_5_6").unwrap();
        assert_eq!(
            (full.stream, full.ephemeral, full.account_data, full.e2e, full.presence),
            (12, Some(3), Some(4), Some(5), Some(6))
        );
        assert_eq!(full.to_string(), "s12_3_4_5_6");
        let old = SyncToken::parse("s12").unwrap();
        assert_eq!(
            (old.ephemeral, old.account_data, old.e2e, old.presence),
            (None, None, None, None)
        );
        assert_eq!(old.to_string(), "s12");
        assert_eq!(SyncToken::parse("s12_3").unwrap().account_data, None);
        let before_presence = SyncToken::parse("s12_3_4_5").unwrap();
        assert_eq!((before_presence.e2e, before_presence.presence), (Some(5), None));
        assert_eq!(before_presence.to_string(), "s12_3_4_5");
        assert_eq!(
            SyncToken::parse("s12_3_4_5_6_7").unwrap().presence,
            Some(6),
            "later parts are ignored"
        );
        let partial = SyncToken::parse("s12____7").unwrap();
        assert_eq!(
            (partial.ephemeral, partial.account_data, partial.e2e, partial.presence),
            (None, None, None, Some(7)),
            "empty parts are unknown positions"
        );
        assert_eq!(partial.to_string(), "s12____7");
        let gap = SyncToken { e2e: None, ..full };
        assert_eq!(gap.to_string(), "s12_3_4__6");
        assert_eq!(SyncToken::parse(&gap.to_string()), Some(gap));
        for bad in [
            "",
            "12",
            "sx",
            "s1_x",
            "s1_2_x",
            "s1_2_3_x",
            "s1_2_3_4_x",
            "s1_-_3",
            "t1",
        ] {
            assert_eq!(SyncToken::parse(bad), None, "{bad:?}");
        }
    }
}
