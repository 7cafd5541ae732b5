//! Records as the engine sees them: a small vector of (field, value) pairs
//! with interned field names, plus the key and event time.
//!
//! Field names are interned once per pipeline (`Interner`) so transforms and
//! detectors address fields by a `FieldId` resolved when the pipeline is
//! built, and decoding a record allocates nothing for names it has seen.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Index of an interned field name.
pub type FieldId = u32;

/// Most distinct field names one pipeline interns. Bounds memory when input
/// carries ever-new keys (ids, timestamps used as keys); records that would
/// exceed it are dead-lettered.
pub const MAX_FIELDS: usize = 65_536;

/// The field names a pipeline has seen, each with its JSON-quoted form ready
/// for output.
#[derive(Default, Debug, Clone)]
pub struct Interner {
    ids: HashMap<Arc<str>, FieldId, foldhash::fast::RandomState>,
    names: Vec<Arc<str>>,
    quoted: Vec<Box<[u8]>>,
    /// The id seen at each position of the previous record: records of one
    /// stream usually list their fields in the same order, so a comparison
    /// with the predicted name usually replaces a hash lookup.
    recent: Vec<FieldId>,
}

/// The interner is full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_FIELDS} distinct field names; records with new names are refused")]
pub struct TooManyFields;

impl Interner {
    /// The id of `name`, interning it if new.
    pub fn intern(&mut self, name: &str) -> Result<FieldId, TooManyFields> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        if self.names.len() >= MAX_FIELDS {
            return Err(TooManyFields);
        }
        let id = self.names.len() as FieldId;
        let name: Arc<str> = Arc::from(name);
        let quoted = serde_json::to_vec(&*name).unwrap_or_default().into_boxed_slice();
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        self.quoted.push(quoted);
        Ok(id)
    }

    /// `intern`, predicting from the field's position in the record.
    #[inline]
    pub fn intern_at(&mut self, position: usize, name: &str) -> Result<FieldId, TooManyFields> {
        if let Some(&id) = self.recent.get(position) {
            if self.names.get(id as usize).is_some_and(|n| **n == *name) {
                return Ok(id);
            }
        }
        let id = self.intern(name)?;
        if position < self.recent.len() {
            self.recent[position] = id;
        } else if position == self.recent.len() && position < 256 {
            self.recent.push(id);
        }
        Ok(id)
    }

    /// The id of `name` if it was seen.
    pub fn get(&self, name: &str) -> Option<FieldId> {
        self.ids.get(name).copied()
    }

    /// The name of `id`.
    pub fn name(&self, id: FieldId) -> &str {
        self.names.get(id as usize).map(|n| &**n).unwrap_or("")
    }

    /// The name of `id` as a JSON string literal, quotes included.
    pub fn quoted(&self, id: FieldId) -> &[u8] {
        self.quoted.get(id as usize).map(|q| &**q).unwrap_or(b"\"\"")
    }
}

/// A value in a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// JSON null (also an empty CSV cell).
    Null,
    /// true/false.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A finite double.
    Float(f64),
    /// Text.
    Str(Box<str>),
    /// A list.
    List(Vec<Value>),
    /// A nested object, names not interned (see `flatten`).
    Map(Vec<(Box<str>, Value)>),
}

impl Value {
    /// The value as a double, for numbers (and booleans as 0/1).
    #[inline]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// A short description for error messages: type and (truncated) value.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("boolean {b}"),
            Value::Int(n) => format!("integer {n}"),
            Value::Float(x) => format!("number {x}"),
            Value::Str(s) => {
                let short: String = s.chars().take(40).collect();
                if short.len() < s.len() {
                    format!("string {short:?}...")
                } else {
                    format!("string {short:?}")
                }
            }
            Value::List(l) => format!("list of {}", l.len()),
            Value::Map(m) => format!("object with {} fields", m.len()),
        }
    }

    /// The type name used in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "object",
        }
    }
}

impl fmt::Display for Value {
    /// Plain text form: strings unquoted, numbers as written in JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s}"),
            other => write!(f, "{}", crate::codec::json::value_to_string(other)),
        }
    }
}

/// One record flowing through a pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Fields in arrival order; later transforms append.
    pub fields: Vec<(FieldId, Value)>,
    /// The key per-key state is kept under (`""` when the pipeline has none).
    /// A `String` so a reused record keeps its allocation.
    pub key: String,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
}

impl Record {
    /// The value of a field, if present.
    #[inline]
    pub fn get(&self, id: FieldId) -> Option<&Value> {
        self.fields.iter().find(|(f, _)| *f == id).map(|(_, v)| v)
    }

    /// A mutable reference to a field's value, if present.
    #[inline]
    pub fn get_mut(&mut self, id: FieldId) -> Option<&mut Value> {
        self.fields.iter_mut().find(|(f, _)| *f == id).map(|(_, v)| v)
    }

    /// Set a field, replacing its value or appending it.
    #[inline]
    pub fn set(&mut self, id: FieldId, value: Value) {
        match self.get_mut(id) {
            Some(slot) => *slot = value,
            None => self.fields.push((id, value)),
        }
    }

    /// Remove a field, returning its value.
    #[inline]
    pub fn remove(&mut self, id: FieldId) -> Option<Value> {
        let pos = self.fields.iter().position(|(f, _)| *f == id)?;
        Some(self.fields.remove(pos).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_quotes_names_for_json() {
        let mut i = Interner::default();
        let a = i.intern("cpu").unwrap();
        let b = i.intern("say \"hi\"").unwrap();
        assert_eq!(i.intern("cpu").unwrap(), a);
        assert_eq!(i.name(b), "say \"hi\"");
        assert_eq!(i.quoted(b), br#""say \"hi\"""#);
        assert_eq!(i.get("absent"), None);
    }

    #[test]
    fn set_replaces_in_place_and_remove_returns_the_value() {
        let mut r = Record::default();
        r.set(1, Value::Int(1));
        r.set(2, Value::Int(2));
        r.set(1, Value::Float(1.5));
        assert_eq!(r.fields, vec![(1, Value::Float(1.5)), (2, Value::Int(2))]);
        assert_eq!(r.remove(1), Some(Value::Float(1.5)));
        assert_eq!(r.get(1), None);
    }
}
