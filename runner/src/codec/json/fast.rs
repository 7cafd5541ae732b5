//! The direct path of `json::decode`: a byte-level parser for the JSON
//! records producers write. It gives up (returns false; `out` then holds
//! nothing useful) on anything it does not handle exactly as serde_json
//! does: escapes in strings, integers of more than 18 digits, `-0`, numbers
//! out of range, nesting deeper than `MAX_DEPTH`, and every syntax error.
//! serde_json then decides, so both accept the same records and the errors
//! read the same. Going through serde's visitors was a third of a `robustZ`
//! pipeline's time.

use crate::record::{FieldId, Interner, Value};

/// serde_json refuses nesting deeper than 128; past this the decision is
/// left to it.
const MAX_DEPTH: usize = 100;

struct Parser<'a> {
    /// The record, checked as UTF-8 once: every string and number is a
    /// slice of it between ASCII bytes, so at character boundaries.
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

/// Powers of ten a double holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Decode one JSON object into `out` (cleared first); false when serde_json
/// must decide.
pub(super) fn decode(bytes: &[u8], interner: &mut Interner, out: &mut Vec<(FieldId, Value)>) -> bool {
    out.clear();
    // Invalid UTF-8 anywhere is an error serde_json reports (in a string)
    // or a syntax error (outside one): either way, its decision.
    let Ok(text) = std::str::from_utf8(bytes) else { return false };
    let mut p = Parser { text, b: bytes, i: 0 };
    p.ws();
    if !p.eat(b'{') {
        return false;
    }
    let mut position = 0;
    let members = p.elements(b'}', |p| {
        let name = p.member_name()?;
        // Interned before the value is read, as serde's visitor does.
        let id = interner.intern_at(position, name).ok()?;
        position += 1;
        let value = p.value(1)?;
        // Duplicate names: the last one wins, as in most JSON readers.
        match out.iter_mut().find(|(f, _)| *f == id) {
            Some(slot) => slot.1 = value,
            None => out.push((id, value)),
        }
        Some(())
    });
    if members.is_none() {
        return false;
    }
    p.ws();
    p.i == bytes.len()
}

impl<'a> Parser<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    /// The elements of an array or object, just inside its opening
    /// bracket: `each` reads one element, then a comma (and whitespace)
    /// leads to the next and `close` ends them; `None` at anything else.
    #[inline]
    fn elements(&mut self, close: u8, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.eat(close) {
            return Some(());
        }
        loop {
            each(self)?;
            self.ws();
            if self.eat(close) {
                return Some(());
            }
            if !self.eat(b',') {
                return None;
            }
            self.ws();
        }
    }

    /// A member's name and the colon after it, up to its value.
    #[inline]
    fn member_name(&mut self) -> Option<&'a str> {
        if !self.eat(b'"') {
            return None;
        }
        let name = self.string()?;
        self.ws();
        if !self.eat(b':') {
            return None;
        }
        self.ws();
        Some(name)
    }

    /// The rest of a string after its opening quote, if it has no escape
    /// and no control character.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        let start = self.i;
        let n = self.b[start..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if self.b[start + n] != b'"' {
            return None;
        }
        self.i = start + n + 1;
        self.text.get(start..start + n)
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        match *self.b.get(self.i)? {
            b'"' => {
                self.i += 1;
                Some(Value::Str(self.string()?.into()))
            }
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                let mut items = Vec::new();
                self.elements(b']', |p| {
                    items.push(p.value(depth + 1)?);
                    Some(())
                })?;
                Some(Value::List(items))
            }
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                let mut fields: Vec<(Box<str>, Value)> = Vec::with_capacity(8);
                self.elements(b'}', |p| {
                    let name = p.member_name()?;
                    fields.push((name.into(), p.value(depth + 1)?));
                    Some(())
                })?;
                Some(Value::Map(fields))
            }
            _ => None,
        }
    }

    /// `true`, `false` or `null`; what follows is checked by the caller.
    #[inline]
    fn literal(&mut self, word: &[u8], value: Value) -> Option<Value> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(value)
        } else {
            None
        }
    }

    /// A number by JSON's grammar. Integers of up to 18 digits are read
    /// exactly (as serde_json does, as i64 or u64). A decimal of up to 15
    /// significant digits with a small exponent is one exact division or
    /// multiplication of two exactly held doubles, so correctly rounded
    /// (Clinger's fast path); the rest goes to the standard library's
    /// correctly rounded parser. serde_json rounds correctly too, with its
    /// `float_roundtrip` feature, which Vigil enables.
    #[inline]
    fn number(&mut self) -> Option<Value> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        // The significant digits as an integer while it stays exact.
        let mut mantissa: u64 = 0;
        let mut digits = 0u32;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(&d @ b'0'..=b'9') = b.get(i) {
                    mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    digits += 1;
                    i += 1;
                }
            }
            _ => return None,
        }
        let mut float = false;
        let mut exponent: i64 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let fraction = i;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                // Leading zeros of the fraction are not significant.
                if mantissa != 0 || d != b'0' {
                    digits += 1;
                }
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                i += 1;
            }
            if i == fraction {
                return None;
            }
            exponent = -((i - fraction) as i64);
            float = true;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            let negative_exponent = b.get(i) == Some(&b'-');
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let first = i;
            let mut e: i64 = 0;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                e = e.saturating_mul(10).saturating_add(i64::from(d - b'0'));
                i += 1;
            }
            if i == first {
                return None;
            }
            exponent = exponent.saturating_add(if negative_exponent { -e } else { e });
            float = true;
        }
        self.i = i;
        if !float {
            // `digits` counts the integer's digits here (none for a 0).
            if digits > 18 {
                return None;
            }
            let n = mantissa as i64;
            return match (negative, n) {
                // serde_json reads -0 as the float -0.0.
                (true, 0) => None,
                (true, n) => Some(Value::Int(-n)),
                (false, n) => Some(Value::Int(n)),
            };
        }
        if digits <= 15 && (-22..=22).contains(&exponent) {
            let m = mantissa as f64;
            let x = if exponent < 0 { m / POW10[(-exponent) as usize] } else { m * POW10[exponent as usize] };
            return Some(Value::Float(if negative { -x } else { x }));
        }
        let x: f64 = self.text.get(start..i)?.parse().ok()?;
        x.is_finite().then_some(Value::Float(x))
    }
}
