//! JSON that is canonical but for its numbers, as Synapse writes it.
//!
//! The spec's canonical JSON has integers within ±(2^53 − 1) only, and
//! ruma's `CanonicalJsonValue` nothing else. Synapse (Python's
//! `canonicaljson`) encodes any JSON number: a float as Python's `repr`
//! writes it (`1.5`, `1.0`, `1e+20`, `1e-05`), an integer in full. Events of
//! room versions 1–5 may hold such numbers, and Synapse signs the requests
//! that carry them (a `/send` transaction with such an event) over that
//! encoding. To check what Synapse signed, the value is made canonical by
//! ruma with each such number replaced by a placeholder integer, and the
//! placeholders are written back as Python writes the numbers.
//!
//! Integers beyond ±2^63 are read as floats by `serde_json` and written as
//! such: a signature over one of those does not verify.
//!
//! What weft does with such numbers:
//! - in a transaction (`/send`, `federation_api::extract`): its `X-Matrix`
//!   signature is checked over this encoding, whatever the rooms' versions
//!   (a transaction is a request, not an event); any other request with
//!   them is refused as bad JSON (`send_join`, `send_leave`, `invite`:
//!   SyTest checks `M_BAD_JSON` for those of rooms v6+);
//! - in an event of room versions 6 and later: the spec requires canonical
//!   JSON there; Synapse refuses it, and so does weft;
//! - in an event of room versions 1–5: legal, and Synapse takes it; weft,
//!   which keeps events as canonical JSON, refuses it. Pushed in `/send`,
//!   it gets an error under the ID its sender computed ([`event_id`]); met
//!   elsewhere (`/get_missing_events`, `/backfill`, state), it is dropped.

use std::collections::{HashMap, HashSet};

use ruma::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::{Number, Value};

/// The highest integer canonical JSON holds: placeholders count down from
/// it, skipping integers the value holds.
const MAX_SAFE: i64 = 9_007_199_254_740_991;

/// A value made canonical, with its loose numbers stood in for.
pub struct Loose {
    value: CanonicalJsonValue,
    /// Placeholder → the number as Python writes it.
    numbers: Vec<(String, String)>,
}

impl Loose {
    /// `value` with a placeholder for each number canonical JSON cannot
    /// hold; `None` for a value canonical JSON refuses for another reason
    /// (none, from parsed JSON).
    pub fn new(value: Value) -> Option<Loose> {
        let mut held = HashSet::new();
        integers(&value, &mut held);
        let mut next = MAX_SAFE;
        let mut numbers = Vec::new();
        let value = replace(value, &mut |n: &Number| {
            while held.contains(&next) {
                next -= 1;
            }
            let placeholder = next;
            next -= 1;
            numbers.push((placeholder.to_string(), python_number(n)));
            placeholder
        });
        Some(Loose {
            value: CanonicalJsonValue::try_from(value).ok()?,
            numbers,
        })
    }

    /// Whether any number needed a placeholder.
    pub fn is_loose(&self) -> bool {
        !self.numbers.is_empty()
    }

    pub fn value(&self) -> &CanonicalJsonValue {
        &self.value
    }

    /// The canonical text of `value` (this value, or one made of it: a
    /// request around it, its redacted form) with the numbers written back.
    pub fn write(&self, value: &CanonicalJsonValue) -> String {
        let text = value.to_string();
        if self.numbers.is_empty() {
            return text;
        }
        let numbers: HashMap<&str, &str> = self.numbers.iter().map(|(p, n)| (p.as_str(), n.as_str())).collect();
        restore_numbers(&text, &numbers)
    }

    /// The canonical text of `object`, as [`Loose::write`].
    pub fn write_object(&self, object: &CanonicalJsonObject) -> String {
        self.write(&CanonicalJsonValue::Object(object.clone()))
    }
}

/// The ID of an event (a PDU as received) that holds numbers canonical
/// JSON has not, as the server that made it computed it: in room versions
/// 1 and 2 its `event_id`, else its reference hash over its redacted form
/// written as Synapse writes it. `None` when it has none.
pub fn event_id(pdu: Value, rules: &ruma::room_version_rules::RoomVersionRules) -> Option<ruma::OwnedEventId> {
    use base64::Engine as _;
    use sha2::Digest as _;

    let loose = Loose::new(pdu)?;
    let CanonicalJsonValue::Object(object) = loose.value().clone() else {
        return None;
    };
    if rules.event_format.require_event_id {
        return crate::events::ids::event_id_of(&object, rules).ok();
    }
    let mut redacted = ruma::canonical_json::redact(object, &rules.redaction, None).ok()?;
    redacted.remove("signatures");
    redacted.remove("unsigned");
    let hash = sha2::Sha256::digest(loose.write_object(&redacted).as_bytes());
    let hash = match rules.event_id_format {
        ruma::room_version_rules::EventIdFormatVersion::V1 | ruma::room_version_rules::EventIdFormatVersion::V2 => {
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        }
        _ => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash),
    };
    ruma::OwnedEventId::try_from(format!("${hash}")).ok()
}

/// The integers canonical JSON holds.
const SAFE: std::ops::RangeInclusive<i64> = -MAX_SAFE..=MAX_SAFE;

/// Whether canonical JSON holds `n`.
fn is_safe(n: &Number) -> bool {
    n.as_i64().is_some_and(|i| SAFE.contains(&i))
}

/// Whether `value` holds a number canonical JSON has not.
pub fn is_loose(value: &Value) -> bool {
    match value {
        Value::Number(n) => !is_safe(n),
        Value::Array(items) => items.iter().any(is_loose),
        Value::Object(map) => map.values().any(is_loose),
        _ => false,
    }
}

/// The integers canonical JSON holds, in `value`.
fn integers(value: &Value, held: &mut HashSet<i64>) {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64().filter(|i| SAFE.contains(i)) {
                held.insert(i);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| integers(v, held)),
        Value::Object(map) => map.values().for_each(|v| integers(v, held)),
        _ => {}
    }
}

/// `value` with each number canonical JSON cannot hold replaced by what
/// `placeholder` gives.
fn replace(value: Value, placeholder: &mut impl FnMut(&Number) -> i64) -> Value {
    match value {
        Value::Number(n) if !is_safe(&n) => Value::from(placeholder(&n)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| replace(v, placeholder)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, replace(v, placeholder))).collect()),
        other => other,
    }
}

/// Canonical JSON text with each number token (outside strings) that is
/// a placeholder replaced by its number: one pass over the text, however
/// many numbers.
fn restore_numbers(text: &str, numbers: &HashMap<&str, &str>) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    // `text[..copied]` is in `out`; every index used is an ASCII byte's.
    let mut copied = 0;
    let mut in_string = false;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if in_string => at += 2,
            b'"' => {
                in_string = !in_string;
                at += 1;
            }
            b'-' | b'0'..=b'9' if !in_string => {
                let start = at;
                while at < bytes.len() && matches!(bytes[at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    at += 1;
                }
                if let Some(number) = numbers.get(&text[start..at]) {
                    out.push_str(&text[copied..start]);
                    out.push_str(number);
                    copied = at;
                }
            }
            _ => at += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// A JSON number as Python's `json` writes it: an integer in full, a
/// float as `repr` does.
fn python_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    python_float(n.as_f64().unwrap_or(0.0))
}

/// A float as Python's `repr` writes it: the shortest digits that read
/// back to it, in positional notation when the decimal exponent is within
/// −4 ≤ e < 16 (with `.0` when integral), else as `d.ddde±XX`.
pub fn python_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.2345e-5`.
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    // The decimal point's place after the first `decpt` digits.
    let decpt = exponent + 1;
    let body = if !(-4 < decpt && decpt <= 16) {
        let (first, more) = digits.split_at(1);
        let mantissa = if more.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{more}")
        };
        let e = decpt - 1;
        format!("{mantissa}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (whole, fraction) = digits.split_at(decpt as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Python 3's `canonicaljson.encode_canonical_json` writes (run
    /// with the canonicaljson of Synapse's virtualenv).
    #[test]
    fn floats_as_python_writes_them() {
        for (x, python) in [
            (1.5, "1.5"),
            (1.0, "1.0"),
            (1e20, "1e+20"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(python_float(x), python, "{x:e}");
        }
    }

    #[test]
    fn a_value_with_floats_is_written_as_synapse_writes_it() {
        let value: Value = serde_json::from_str(
            r#"{"b":1.5,"a":[1.0,2,9007199254740991,1e20],"c":{"x":-0.0,"big":12345678901234567890}}"#,
        )
        .unwrap();
        let loose = Loose::new(value).unwrap();
        assert!(loose.is_loose());
        assert_eq!(
            loose.write(loose.value()),
            r#"{"a":[1.0,2,9007199254740991,1e+20],"b":1.5,"c":{"big":12345678901234567890,"x":-0.0}}"#
        );
        let canonical = Loose::new(serde_json::json!({"a": 1, "s": "9007199254740990"})).unwrap();
        assert!(!canonical.is_loose());
        assert_eq!(canonical.write(canonical.value()), r#"{"a":1,"s":"9007199254740990"}"#);
    }

    /// A placeholder's digits inside a string (or a key) stay as they are:
    /// only number tokens are numbers. (Before, a string holding
    /// `,<placeholder>,` had the number written into it, and the signature
    /// of a transaction with such a message and a float never verified.)
    #[test]
    fn placeholders_in_strings_are_text() {
        let value: Value = serde_json::from_str(
            r#"{"a":1.5,"s":",9007199254740991,","9007199254740991":[9007199254740991.5,"[9007199254740990]"]}"#,
        )
        .unwrap();
        let loose = Loose::new(value.clone()).unwrap();
        let text = loose.write(loose.value());
        assert_eq!(
            text,
            r#"{"9007199254740991":[9007199254740992.0,"[9007199254740990]"],"a":1.5,"s":",9007199254740991,"}"#
        );
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    /// Found by the `canonical_json` fuzz target's replay of its seeds: a
    /// bare number was not written back (nothing stood before it).
    #[test]
    fn a_bare_number_is_written_back() {
        let loose = Loose::new(serde_json::json!(1.5)).unwrap();
        assert_eq!(loose.write(loose.value()), "1.5");
    }

    /// Writing is one pass over the text: a body of the largest size with
    /// a float every few bytes (before, a pass over the whole text per
    /// number: minutes of CPU for one request, before its signature was
    /// checked).
    #[test]
    fn many_numbers_are_written_in_one_pass() {
        let numbers: Vec<Value> = (0..100_000).map(|i| Value::from(f64::from(i) + 0.5)).collect();
        let value = serde_json::json!({ "pdus": numbers });
        let loose = Loose::new(value.clone()).unwrap();
        let started = std::time::Instant::now();
        let text = loose.write(loose.value());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    /// Found by the `canonical_json` fuzz target: serde_json's default
    /// float parsing is not exact (it can read the neighbouring float), so
    /// a float as Synapse writes it was read as another and written back
    /// otherwise, and the signature over it failed. Its `float_roundtrip`
    /// feature (Cargo.toml) reads them exactly.
    #[test]
    fn floats_are_read_exactly() {
        for text in [
            "1.2349567890123457e+44",
            "1.0715660391465826e-75",
            "0.30000000000000004",
        ] {
            let value: Value = serde_json::from_str(&format!("[{text}]")).unwrap();
            let loose = Loose::new(value).unwrap();
            assert_eq!(loose.write(loose.value()), format!("[{text}]"));
        }
    }

    /// `i64::MIN`, which serde_json reads as an integer, is out of range
    /// (its `abs` overflowed: a panic in builds with overflow checks, and
    /// in release a number taken for canonical, so that a transaction
    /// holding one was refused whole instead of that PDU alone).
    #[test]
    fn the_lowest_integer_is_loose() {
        let value: Value = serde_json::from_str("[-9223372036854775808,-9007199254740991]").unwrap();
        assert!(is_loose(&value));
        let loose = Loose::new(value.clone()).unwrap();
        assert_eq!(loose.write(loose.value()), "[-9223372036854775808,-9007199254740991]");
        assert!(!is_loose(&serde_json::json!([
            -9007199254740991i64,
            9007199254740991i64
        ])));
    }
}
