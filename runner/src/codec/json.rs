//! JSON in and out. Decoding reads a top-level object straight into a
//! `Record` (field names interned, numbers kept as numbers); encoding writes
//! a record back with names pre-quoted.

use std::fmt;
use std::io::Write;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::record::{FieldId, Interner, TooManyFields, Value};

/// Why a JSON record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, or not an object.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Too many distinct field names.
    #[error(transparent)]
    TooManyFields(#[from] TooManyFields),
}

mod fast;

/// Decode one JSON object into `out` (cleared first).
///
/// Records as producers write them (no escapes in strings, integers of at
/// most 18 digits) take a direct path (`fast`); anything else, and every
/// error, goes through serde_json (`decode_with_serde`), so the two accept
/// the same records and the errors read the same. The fuzz target
/// `json_decode` and the tests below compare them.
pub fn decode(
    bytes: &[u8],
    interner: &mut Interner,
    out: &mut Vec<(FieldId, Value)>,
) -> Result<(), JsonError> {
    if fast::decode(bytes, interner, out) {
        return Ok(());
    }
    decode_with_serde(bytes, interner, out)
}

/// `decode` through serde_json only: the reference the direct path is
/// compared with.
#[doc(hidden)]
pub fn decode_with_serde(
    bytes: &[u8],
    interner: &mut Interner,
    out: &mut Vec<(FieldId, Value)>,
) -> Result<(), JsonError> {
    out.clear();
    let mut overflow = false;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = RecordSeed { interner, out, overflow: &mut overflow };
    let res = de.deserialize_map(seed).and_then(|()| de.end());
    if overflow {
        return Err(JsonError::TooManyFields(TooManyFields));
    }
    res.map_err(|e| JsonError::Syntax(e.to_string()))
}

struct RecordSeed<'a> {
    interner: &'a mut Interner,
    out: &'a mut Vec<(FieldId, Value)>,
    overflow: &'a mut bool,
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(key) = map.next_key_seed(KeySeed(self.interner, position))? {
            position += 1;
            let Some(id) = key else {
                *self.overflow = true;
                return Err(de::Error::custom("too many field names"));
            };
            let value: Value = map.next_value_seed(ValueSeed)?;
            // Duplicate names: the last one wins, as in most JSON readers.
            match self.out.iter_mut().find(|(f, _)| *f == id) {
                Some(slot) => slot.1 = value,
                None => self.out.push((id, value)),
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// Interns a top-level name, knowing its position in the record.
struct KeySeed<'a>(&'a mut Interner, usize);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<FieldId>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<FieldId>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.intern_at(self.1, v).ok())
    }
}

/// Deserialises any JSON value into a `Value`.
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if v.is_finite() { Ok(Value::Float(v)) } else { Err(E::custom("number out of range")) }
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v.into_boxed_str()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields: Vec<(Box<str>, Value)> = Vec::with_capacity(8);
        while let Some(k) = map.next_key_seed(NameSeed)? {
            let v = map.next_value_seed(ValueSeed)?;
            fields.push((k, v));
        }
        Ok(Value::Map(fields))
    }
}

/// A nested object's member name, allocated once at its exact size.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Box<str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Box<str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Box<str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E>(self, v: &str) -> Result<Box<str>, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Box<str>, E> {
        Ok(v.into_boxed_str())
    }
}

/// Append `value` as JSON.
pub fn write_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(true) => buf.extend_from_slice(b"true"),
        Value::Bool(false) => buf.extend_from_slice(b"false"),
        Value::Int(n) => buf.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        Value::Float(x) => write_f64(buf, *x),
        Value::Str(s) => write_str(buf, s),
        Value::List(items) => {
            buf.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_value(buf, v);
            }
            buf.push(b']');
        }
        Value::Map(fields) => {
            buf.push(b'{');
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                write_str(buf, k);
                buf.push(b':');
                write_value(buf, v);
            }
            buf.push(b'}');
        }
    }
}

/// Append a finite double in its shortest round-trip form; non-finite
/// values (which records never hold) become null rather than invalid JSON.
/// zmij (Schubfach) formats in about half of ryu's time, which mattered:
/// float formatting was a fifth of a peer-pipeline run's profile.
#[inline]
pub fn write_f64(buf: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        buf.extend_from_slice(zmij::Buffer::new().format_finite(x).as_bytes());
    } else {
        buf.extend_from_slice(b"null");
    }
}

/// Append a number in [0, 1] with at most six decimals (scores and
/// weights): cheaper than shortest-representation formatting, and more
/// digits would be noise.
#[inline]
pub fn write_unit(buf: &mut Vec<u8>, x: f64) {
    let micros = (x.clamp(0.0, 1.0) * 1e6).round() as u32;
    match micros {
        0 => buf.extend_from_slice(b"0.0"),
        1_000_000 => buf.extend_from_slice(b"1.0"),
        m => {
            let mut digits = [b'0'; 6];
            let mut v = m;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (v % 10) as u8;
                v /= 10;
            }
            let len = 6 - digits.iter().rev().take_while(|d| **d == b'0').count();
            buf.extend_from_slice(b"0.");
            buf.extend_from_slice(&digits[..len]);
        }
    }
}

/// Append a JSON string literal.
#[inline]
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // serde_json's escaping; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// Append the record's fields as the members of an open JSON object
/// (no braces); returns whether anything was written.
pub fn write_fields(buf: &mut Vec<u8>, fields: &[(FieldId, Value)], interner: &Interner) -> bool {
    for (i, (id, v)) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(interner.quoted(*id));
        buf.push(b':');
        write_value(buf, v);
    }
    !fields.is_empty()
}

/// A value as compact JSON text.
pub fn value_to_string(value: &Value) -> String {
    let mut buf = Vec::new();
    write_value(&mut buf, value);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Write a record as one JSON object.
pub fn write_record(
    w: &mut impl Write,
    fields: &[(FieldId, Value)],
    interner: &Interner,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(128);
    buf.push(b'{');
    write_fields(&mut buf, fields, interner);
    buf.push(b'}');
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a decoder made of `src`: the fields by name (floats by their
    /// Debug form, so -0.0 and 0.0 differ), or the error.
    fn outcome(src: &[u8], serde_only: bool) -> String {
        let mut i = Interner::default();
        let mut out = Vec::new();
        let r =
            if serde_only { decode_with_serde(src, &mut i, &mut out) } else { decode(src, &mut i, &mut out) };
        match r {
            Ok(()) => out.iter().map(|(f, v)| format!("{}={v:?};", i.name(*f))).collect(),
            Err(e) => format!("error: {e}"),
        }
    }

    fn same_as_serde(src: &[u8]) {
        assert_eq!(outcome(src, false), outcome(src, true), "{}", String::from_utf8_lossy(src));
    }

    #[test]
    fn the_direct_path_decodes_as_serde_json_does() {
        let cases: &[&[u8]] = &[
            br#"{"ts":1764000000000,"key":"k42","f1":0.123456,"f2":-3.5e-7,"f3":12,"f4":-0.0}"#,
            br#" { "a" : 1 , "b" : [ ] , "c" : { } , "d" : [1,[2,[3]]], "e": {"x": {"y": null}} } "#,
            br#"{"a":-0}"#,
            br#"{"a":0}"#,
            br#"{"a":-1}"#,
            br#"{"a":999999999999999999}"#,
            br#"{"a":-999999999999999999}"#,
            br#"{"a":9999999999999999999}"#,
            br#"{"a":18446744073709551616}"#,
            br#"{"a":-9223372036854775808}"#,
            br#"{"a":1e400}"#,
            br#"{"a":-1e400}"#,
            br#"{"a":1e-400}"#,
            br#"{"a":2.2250738585072011e-308}"#,
            br#"{"a":4.9e-324}"#,
            br#"{"a":0.1000000000000000055511151231257827021181583404541015625}"#,
            br#"{"a":1.7976931348623157e308}"#,
            br#"{"a":1E5,"b":1e+5,"c":1e-5,"d":0e0,"e":0.0}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":+1}"#,
            br#"{"a":1e}"#,
            br#"{"a":--1}"#,
            br#"{"a":1x}"#,
            br#"{"a":truex}"#,
            br#"{"a":tru}"#,
            br#"{"a":nul}"#,
            br#"{"a":false,"b":true,"c":null}"#,
            br#"{"a":"x\"y","b":"\u00e9\ud83d\ude00"}"#,
            b"{\"a\":\"tab\tinside\"}",
            "{\"caf\u{e9}\":\"\u{1F600}\"}".as_bytes(),
            b"{\"a\":\"\xff\"}",
            b"{\"\xc3\":1}",
            br#"{"a":1,}"#,
            br#"{"a":1 "b":2}"#,
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"a":1}}"#,
            br#"{"a":1} x"#,
            b"{\"a\":1}\n",
            b"\t{\"a\":1}\r\n",
            br#"{"a":[1,]}"#,
            br#"{"a":{"b":1,}}"#,
            br#"{"a":1,"a":2,"b":3,"a":4}"#,
            br#"{"a":{"k":1,"k":2}}"#,
            br#"[1,2]"#,
            br#""x""#,
            br#"{}"#,
            b"",
            b"{",
            br#"{"a":"#,
            br#"{"a":"unterminated"#,
            br#"{"a":[1,2"#,
        ];
        for c in cases {
            same_as_serde(c);
        }
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        for n in [98, 99, 100, 126, 127, 128, 200] {
            same_as_serde(deep(n).as_bytes());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Numbers in the range of the direct path's exact shortcut and
        /// just past it: the same double, to the bit, as serde_json's.
        #[test]
        fn numbers_decode_to_the_same_double(
            number in r"-?(0|[1-9][0-9]{0,16})(\.[0-9]{1,17})?([eE][+-]?[0-9]{1,2})?",
        ) {
            same_as_serde(format!("{{\"x\":{number}}}").as_bytes());
        }
    }

    proptest::proptest! {
        /// Records built from JSON's grammar, with the awkward corners
        /// (escapes, long and negative numbers, exponents, nesting, stray
        /// bytes) turned up, decode the same both ways.
        #[test]
        fn direct_and_serde_agree_on_generated_records(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
                    r#""[a-z\\"é😀]{0,6}""#,
                    proptest::strategy::Just("true".to_string()),
                    proptest::strategy::Just("null".to_string()),
                    r"\[(-?[0-9]{1,3}, ?){0,3}\]",
                    r#"\{("[a-z]{1,2}": ?[0-9.e-]{1,4}, ?){0,2}\}"#,
                    "[ -~]{1,3}",
                ],
                0..8,
            ),
            spaces in "[ \t\n]{0,2}",
        ) {
            let mut src = String::from("{");
            for (n, part) in parts.iter().enumerate() {
                if n > 0 {
                    src.push(',');
                    src.push_str(&spaces);
                }
                src.push_str(&format!("\"f{}\":{spaces}{part}", n % 5));
            }
            src.push('}');
            same_as_serde(src.as_bytes());
        }
    }

    fn roundtrip(src: &str) -> String {
        let mut i = Interner::default();
        let mut out = Vec::new();
        decode(src.as_bytes(), &mut i, &mut out).unwrap();
        let mut buf = Vec::new();
        write_record(&mut buf, &out, &i).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn numbers_stay_numbers_and_order_is_kept() {
        assert_eq!(
            roundtrip(r#"{"b": 1, "a": 2.5, "s": "x\"y", "n": null, "l": [1, {"k": true}]}"#),
            r#"{"b":1,"a":2.5,"s":"x\"y","n":null,"l":[1,{"k":true}]}"#
        );
    }

    #[test]
    fn unit_numbers_have_at_most_six_decimals() {
        let w = |x: f64| {
            let mut b = Vec::new();
            write_unit(&mut b, x);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(w(0.0), "0.0");
        assert_eq!(w(1.0), "1.0");
        assert_eq!(w(0.5), "0.5");
        assert_eq!(w(0.0000004), "0.0");
        assert_eq!(w(0.123456789), "0.123457");
        assert_eq!(w(0.05), "0.05");
        assert_eq!(w(0.9999999), "1.0");
    }

    #[test]
    fn duplicate_names_keep_the_last_value() {
        assert_eq!(roundtrip(r#"{"a": 1, "a": 2}"#), r#"{"a":2}"#);
    }

    #[test]
    fn refuses_non_objects_trailing_garbage_and_overflow() {
        let mut i = Interner::default();
        let mut out = Vec::new();
        for bad in ["[1,2]", "42", "{\"a\": 1} x", "{\"a\": ", "{\"a\": 1e999}", "", "\u{feff}{}"] {
            let err = decode(bad.as_bytes(), &mut i, &mut out).unwrap_err();
            assert!(matches!(err, JsonError::Syntax(_)), "{bad:?}: {err:?}");
        }
    }
}
