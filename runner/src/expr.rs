//! Evaluates `filter`/`derive` expressions (parsed by `vigil_crds::expr`)
//! against records. Expressions are compiled once: field names resolve to
//! ids, functions to an enum, regexes are built ahead; evaluation borrows
//! record values instead of copying them.
//!
//! Errors (a missing field, a type mismatch, integer overflow) are values:
//! the record is dead-lettered with the message, the runner carries on.

use std::borrow::Cow;

use regex::Regex;
use vigil_crds::expr::{BinOp, Expr, Lit, UnOp};

use crate::record::{FieldId, Interner, Record, Value};

/// A compiled expression.
#[derive(Debug)]
pub struct Compiled {
    root: Node,
    source: String,
}

#[derive(Debug)]
enum Node {
    Const(Value),
    Field(FieldId),
    RecordDyn(Box<Node>),
    Member(Box<Node>, Box<str>),
    Index(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    Matches(Box<Node>, Regex),
    List(Vec<Node>),
    HasField(FieldId),
    HasMember(Box<Node>, Box<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Size,
    Int,
    Double,
    String,
    Abs,
    Min,
    Max,
    Sqrt,
    Log,
    Log10,
    Exp,
    Pow,
    Floor,
    Ceil,
    Round,
    StartsWith,
    EndsWith,
    Contains,
    Matches,
    Lower,
    Upper,
    Trim,
}

/// (name, function, arguments including the receiver, or `None` for one or more).
const FUNCS: &[(&str, Func, Option<usize>)] = &[
    ("size", Func::Size, Some(1)),
    ("int", Func::Int, Some(1)),
    ("double", Func::Double, Some(1)),
    ("string", Func::String, Some(1)),
    ("abs", Func::Abs, Some(1)),
    ("min", Func::Min, None),
    ("max", Func::Max, None),
    ("sqrt", Func::Sqrt, Some(1)),
    ("log", Func::Log, Some(1)),
    ("log10", Func::Log10, Some(1)),
    ("exp", Func::Exp, Some(1)),
    ("pow", Func::Pow, Some(2)),
    ("floor", Func::Floor, Some(1)),
    ("ceil", Func::Ceil, Some(1)),
    ("round", Func::Round, Some(1)),
    ("startsWith", Func::StartsWith, Some(2)),
    ("endsWith", Func::EndsWith, Some(2)),
    ("contains", Func::Contains, Some(2)),
    ("matches", Func::Matches, Some(2)),
    ("lowerAscii", Func::Lower, Some(1)),
    ("upperAscii", Func::Upper, Some(1)),
    ("trim", Func::Trim, Some(1)),
];

/// The names of the functions expressions may call.
pub fn function_names() -> Vec<&'static str> {
    FUNCS.iter().map(|(n, _, _)| *n).collect()
}

impl Compiled {
    /// Parse and compile `source`, interning the fields it reads.
    pub fn new(source: &str, interner: &mut Interner) -> Result<Self, String> {
        let expr = vigil_crds::expr::parse(source).map_err(|e| format!("{source:?}: {e}"))?;
        let root = compile(&expr, interner).map_err(|e| format!("{source:?}: {e}"))?;
        Ok(Compiled { root, source: source.to_string() })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate against a record.
    pub fn eval<'a>(&'a self, rec: &'a Record, interner: &Interner) -> Result<Cow<'a, Value>, String> {
        eval(&self.root, rec, interner)
    }

    /// Evaluate as a condition.
    pub fn eval_bool(&self, rec: &Record, interner: &Interner) -> Result<bool, String> {
        match self.eval(rec, interner)?.as_ref() {
            Value::Bool(b) => Ok(*b),
            other => Err(format!("expression must be true or false, got {}", other.describe())),
        }
    }
}

fn compile(e: &Expr, interner: &mut Interner) -> Result<Node, String> {
    let mut c = |e: &Expr| compile(e, interner).map(Box::new);
    Ok(match e {
        Expr::Lit(l) => Node::Const(match l {
            Lit::Null => Value::Null,
            Lit::Bool(b) => Value::Bool(*b),
            Lit::Int(n) => Value::Int(*n),
            Lit::Float(x) => Value::Float(*x),
            Lit::Str(s) => Value::Str(s.as_str().into()),
        }),
        Expr::Field(name) => Node::Field(interner.intern(name).map_err(|e| e.to_string())?),
        Expr::Record => {
            return Err("'record' must be followed by a field: record.name or record[\"name\"]".into());
        }
        Expr::Member(base, name) if **base == Expr::Record => {
            Node::Field(interner.intern(name).map_err(|e| e.to_string())?)
        }
        Expr::Index(base, idx) if **base == Expr::Record => match &**idx {
            Expr::Lit(Lit::Str(name)) => Node::Field(interner.intern(name).map_err(|e| e.to_string())?),
            other => Node::RecordDyn(c(other)?),
        },
        Expr::Member(base, name) => Node::Member(c(base)?, name.as_str().into()),
        Expr::Index(a, b) => Node::Index(c(a)?, c(b)?),
        Expr::Unary(UnOp::Not, a) => Node::Not(c(a)?),
        Expr::Unary(UnOp::Neg, a) => Node::Neg(c(a)?),
        Expr::Binary(BinOp::And, a, b) => Node::And(c(a)?, c(b)?),
        Expr::Binary(BinOp::Or, a, b) => Node::Or(c(a)?, c(b)?),
        Expr::Binary(op, a, b) => Node::Bin(*op, c(a)?, c(b)?),
        Expr::Cond(x, a, b) => Node::Cond(c(x)?, c(a)?, c(b)?),
        Expr::List(items) => {
            Node::List(items.iter().map(|i| compile(i, interner)).collect::<Result<_, _>>()?)
        }
        Expr::Has(arg) => match &**arg {
            Expr::Field(name) => Node::HasField(interner.intern(name).map_err(|e| e.to_string())?),
            Expr::Member(base, name) if **base == Expr::Record => {
                Node::HasField(interner.intern(name).map_err(|e| e.to_string())?)
            }
            Expr::Member(base, name) => Node::HasMember(c(base)?, name.as_str().into()),
            _ => return Err("has() takes a field".into()),
        },
        Expr::Call { name, receiver, args } => {
            let Some((_, func, arity)) = FUNCS.iter().find(|(n, _, _)| n == name) else {
                return Err(format!(
                    "unknown function {name}() (available: {})",
                    function_names().join(", ")
                ));
            };
            let mut all: Vec<&Expr> = receiver.iter().map(|r| &**r).collect();
            all.extend(args.iter());
            let ok = match arity {
                Some(n) => all.len() == *n,
                None => !all.is_empty(),
            };
            if !ok {
                return Err(format!("{name}() takes {} argument(s), got {}", arity.unwrap_or(1), all.len()));
            }
            if *func == Func::Matches {
                if let Expr::Lit(Lit::Str(pattern)) = all[1] {
                    let re = Regex::new(pattern).map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
                    return Ok(Node::Matches(Box::new(compile(all[0], interner)?), re));
                }
            }
            Node::Call(*func, all.into_iter().map(|a| compile(a, interner)).collect::<Result<_, _>>()?)
        }
    })
}

type R<'a> = Result<Cow<'a, Value>, String>;

fn owned<'a>(v: Value) -> R<'a> {
    Ok(Cow::Owned(v))
}

fn eval<'a>(n: &'a Node, rec: &'a Record, interner: &Interner) -> R<'a> {
    match n {
        Node::Const(v) => Ok(Cow::Borrowed(v)),
        Node::Field(id) => {
            rec.get(*id).map(Cow::Borrowed).ok_or_else(|| format!("no such field: {}", interner.name(*id)))
        }
        Node::RecordDyn(idx) => {
            let name = eval(idx, rec, interner)?;
            let Value::Str(name) = name.as_ref() else {
                return Err(format!("record[...] needs a string, got {}", name.describe()));
            };
            let value = interner.get(name).and_then(|id| rec.get(id));
            value.map(Cow::Borrowed).ok_or_else(|| format!("no such field: {name}"))
        }
        Node::Member(base, name) => match eval(base, rec, interner)? {
            Cow::Borrowed(Value::Map(fields)) => fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Cow::Borrowed(v))
                .ok_or_else(|| format!("no such field: {name}")),
            Cow::Owned(Value::Map(fields)) => fields
                .into_iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Cow::Owned(v))
                .ok_or_else(|| format!("no such field: {name}")),
            other => Err(format!("cannot read .{name} of {}", other.describe())),
        },
        Node::Index(a, b) => {
            let base = eval(a, rec, interner)?;
            let idx = eval(b, rec, interner)?;
            let found = match (base.as_ref(), idx.as_ref()) {
                (Value::List(items), Value::Int(i)) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| items.get(i))
                    .cloned()
                    .ok_or_else(|| format!("index {i} out of range for a list of {}", items.len()))?,
                (Value::Map(fields), Value::Str(k)) => fields
                    .iter()
                    .find(|(name, _)| name == k)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| format!("no such key: {k}"))?,
                (b, i) => return Err(format!("cannot index {} with {}", b.describe(), i.describe())),
            };
            owned(found)
        }
        Node::Not(a) => match eval(a, rec, interner)?.as_ref() {
            Value::Bool(b) => owned(Value::Bool(!b)),
            other => Err(format!("! needs a boolean, got {}", other.describe())),
        },
        Node::Neg(a) => match eval(a, rec, interner)?.as_ref() {
            Value::Int(n) => {
                n.checked_neg().map(Value::Int).ok_or_else(|| "integer overflow".to_string()).map(Cow::Owned)
            }
            Value::Float(x) => owned(Value::Float(-x)),
            other => Err(format!("- needs a number, got {}", other.describe())),
        },
        // CEL's logical operators absorb errors when the other side decides:
        // `false && error` is false, `true || error` is true.
        Node::And(a, b) => {
            let left = eval(a, rec, interner).and_then(|v| as_bool(&v, "&&"));
            if left == Ok(false) {
                return owned(Value::Bool(false));
            }
            let right = eval(b, rec, interner).and_then(|v| as_bool(&v, "&&"));
            match (left, right) {
                (_, Ok(false)) => owned(Value::Bool(false)),
                (Ok(true), Ok(true)) => owned(Value::Bool(true)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => owned(Value::Bool(false)),
            }
        }
        Node::Or(a, b) => {
            let left = eval(a, rec, interner).and_then(|v| as_bool(&v, "||"));
            if left == Ok(true) {
                return owned(Value::Bool(true));
            }
            let right = eval(b, rec, interner).and_then(|v| as_bool(&v, "||"));
            match (left, right) {
                (_, Ok(true)) => owned(Value::Bool(true)),
                (Ok(false), Ok(false)) => owned(Value::Bool(false)),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => owned(Value::Bool(true)),
            }
        }
        Node::Cond(c, a, b) => match eval(c, rec, interner)?.as_ref() {
            Value::Bool(true) => eval(a, rec, interner),
            Value::Bool(false) => eval(b, rec, interner),
            other => Err(format!("?: needs a boolean condition, got {}", other.describe())),
        },
        Node::Bin(op, a, b) => {
            let x = eval(a, rec, interner)?;
            let y = eval(b, rec, interner)?;
            binary(*op, &x, &y).map(Cow::Owned)
        }
        Node::List(items) => owned(Value::List(
            items.iter().map(|i| eval(i, rec, interner).map(Cow::into_owned)).collect::<Result<_, _>>()?,
        )),
        Node::HasField(id) => owned(Value::Bool(rec.get(*id).is_some())),
        Node::HasMember(base, name) => match eval(base, rec, interner)?.as_ref() {
            Value::Map(fields) => owned(Value::Bool(fields.iter().any(|(k, _)| k == name))),
            other => Err(format!("has() needs an object, got {}", other.describe())),
        },
        Node::Matches(s, re) => match eval(s, rec, interner)?.as_ref() {
            Value::Str(s) => owned(Value::Bool(re.is_match(s))),
            other => Err(format!("matches() needs a string, got {}", other.describe())),
        },
        Node::Call(f, args) => {
            let vals: Vec<Cow<'a, Value>> =
                args.iter().map(|a| eval(a, rec, interner)).collect::<Result<_, _>>()?;
            call(*f, &vals).map(Cow::Owned)
        }
    }
}

fn as_bool(v: &Value, op: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("{op} needs booleans, got {}", other.describe())),
    }
}

fn num(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::Int(n) => Ok(*n as f64),
        Value::Float(x) => Ok(*x),
        other => Err(format!("{what} needs a number, got {}", other.describe())),
    }
}

fn float(x: f64, what: &str) -> Result<Value, String> {
    if x.is_finite() { Ok(Value::Float(x)) } else { Err(format!("{what} produced {x}, not a finite number")) }
}

fn binary(op: BinOp, x: &Value, y: &Value) -> Result<Value, String> {
    use Value::*;
    let sym = match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
        BinOp::Rem => "%",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::In => "in",
        BinOp::And | BinOp::Or => unreachable!("logical operators are compiled to And/Or nodes"),
    };
    let overflow = || format!("integer overflow in {sym}");
    match op {
        BinOp::Eq => return Ok(Bool(equal(x, y))),
        BinOp::Ne => return Ok(Bool(!equal(x, y))),
        BinOp::In => {
            return match y {
                List(items) => Ok(Bool(items.iter().any(|i| equal(x, i)))),
                Map(fields) => match x {
                    Str(k) => Ok(Bool(fields.iter().any(|(n, _)| n == k))),
                    _ => Ok(Bool(false)),
                },
                other => Err(format!("in needs a list or object on the right, got {}", other.describe())),
            };
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (x, y) {
                (Str(a), Str(b)) => a.cmp(b),
                (Bool(a), Bool(b)) => a.cmp(b),
                (Int(a), Int(b)) => a.cmp(b),
                _ => {
                    let (a, b) = (num(x, sym)?, num(y, sym)?);
                    a.partial_cmp(&b).ok_or_else(|| format!("cannot compare {a} and {b}"))?
                }
            };
            use std::cmp::Ordering::*;
            let r = match op {
                BinOp::Lt => ord == Less,
                BinOp::Le => ord != Greater,
                BinOp::Gt => ord == Greater,
                _ => ord != Less,
            };
            return Ok(Bool(r));
        }
        _ => {}
    }
    match (op, x, y) {
        (BinOp::Add, Str(a), Str(b)) => Ok(Str(format!("{a}{b}").into())),
        (BinOp::Add, List(a), List(b)) => Ok(List(a.iter().chain(b).cloned().collect())),
        (BinOp::Add, Int(a), Int(b)) => a.checked_add(*b).map(Int).ok_or_else(overflow),
        (BinOp::Sub, Int(a), Int(b)) => a.checked_sub(*b).map(Int).ok_or_else(overflow),
        (BinOp::Mul, Int(a), Int(b)) => a.checked_mul(*b).map(Int).ok_or_else(overflow),
        (BinOp::Div | BinOp::Rem, Int(_), Int(0)) => Err("division by zero".into()),
        (BinOp::Div, Int(a), Int(b)) => a.checked_div(*b).map(Int).ok_or_else(overflow),
        (BinOp::Rem, Int(a), Int(b)) => a.checked_rem(*b).map(Int).ok_or_else(overflow),
        _ => {
            let (a, b) = (num(x, sym)?, num(y, sym)?);
            let r = match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                _ => a % b,
            };
            float(r, sym)
        }
    }
}

fn equal(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => (*a as f64) == *b,
        _ => x == y,
    }
}

fn call(f: Func, a: &[Cow<'_, Value>]) -> Result<Value, String> {
    use Value::*;
    let s = |i: usize, what: &str| -> Result<&str, String> {
        match a[i].as_ref() {
            Str(s) => Ok(s),
            other => Err(format!("{what} needs a string, got {}", other.describe())),
        }
    };
    match f {
        Func::Size => match a[0].as_ref() {
            Str(s) => Ok(Int(s.chars().count() as i64)),
            List(l) => Ok(Int(l.len() as i64)),
            Map(m) => Ok(Int(m.len() as i64)),
            other => Err(format!("size() needs a string, list or object, got {}", other.describe())),
        },
        Func::Int => match a[0].as_ref() {
            Int(n) => Ok(Int(*n)),
            Float(x) if x.is_finite() && x.abs() < 9.2e18 => Ok(Int(x.trunc() as i64)),
            Str(s) => s.trim().parse().map(Int).map_err(|_| format!("int() cannot read {s:?}")),
            Bool(b) => Ok(Int(*b as i64)),
            other => Err(format!("int() cannot convert {}", other.describe())),
        },
        Func::Double => match a[0].as_ref() {
            Str(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Float)
                .ok_or_else(|| format!("double() cannot read {s:?}")),
            other => num(other, "double()").map(Float),
        },
        Func::String => Ok(Str(a[0].to_string().into())),
        Func::Abs => match a[0].as_ref() {
            Int(n) => n.checked_abs().map(Int).ok_or_else(|| "integer overflow in abs()".into()),
            other => Ok(Float(num(other, "abs()")?.abs())),
        },
        Func::Min | Func::Max => {
            let items: Vec<&Value> = match a {
                [one] => match one.as_ref() {
                    List(l) if !l.is_empty() => l.iter().collect(),
                    other => {
                        return Err(format!("min()/max() need numbers or a list, got {}", other.describe()));
                    }
                },
                many => many.iter().map(|v| v.as_ref()).collect(),
            };
            let mut best = items[0];
            for v in &items[1..] {
                let (b, x) = (num(best, "min()/max()")?, num(v, "min()/max()")?);
                if (f == Func::Min && x < b) || (f == Func::Max && x > b) {
                    best = v;
                }
            }
            num(best, "min()/max()")?;
            Ok(best.clone())
        }
        Func::Sqrt => float(num(&a[0], "sqrt()")?.sqrt(), "sqrt()"),
        Func::Log => float(num(&a[0], "log()")?.ln(), "log()"),
        Func::Log10 => float(num(&a[0], "log10()")?.log10(), "log10()"),
        Func::Exp => float(num(&a[0], "exp()")?.exp(), "exp()"),
        Func::Pow => float(num(&a[0], "pow()")?.powf(num(&a[1], "pow()")?), "pow()"),
        Func::Floor => float(num(&a[0], "floor()")?.floor(), "floor()"),
        Func::Ceil => float(num(&a[0], "ceil()")?.ceil(), "ceil()"),
        Func::Round => float(num(&a[0], "round()")?.round(), "round()"),
        Func::StartsWith => Ok(Bool(s(0, "startsWith()")?.starts_with(s(1, "startsWith()")?))),
        Func::EndsWith => Ok(Bool(s(0, "endsWith()")?.ends_with(s(1, "endsWith()")?))),
        Func::Contains => Ok(Bool(s(0, "contains()")?.contains(s(1, "contains()")?))),
        Func::Matches => {
            let re = Regex::new(s(1, "matches()")?).map_err(|e| format!("invalid regex: {e}"))?;
            Ok(Bool(re.is_match(s(0, "matches()")?)))
        }
        Func::Lower => Ok(Str(s(0, "lowerAscii()")?.to_ascii_lowercase().into())),
        Func::Upper => Ok(Str(s(0, "upperAscii()")?.to_ascii_uppercase().into())),
        Func::Trim => Ok(Str(s(0, "trim()")?.trim().into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_are_the_ones_validate_and_the_operator_know() {
        let ours: Vec<(&str, Option<usize>)> = FUNCS.iter().map(|(n, _, a)| (*n, *a)).collect();
        assert_eq!(ours, vigil_crds::expr::FUNCTIONS, "runner and crds disagree on functions or arity");
    }
    use crate::codec::json;

    fn run(expr: &str, record: &str) -> Result<Value, String> {
        let mut i = Interner::default();
        let c = Compiled::new(expr, &mut i)?;
        let mut r = Record::default();
        json::decode(record.as_bytes(), &mut i, &mut r.fields).unwrap();
        c.eval(&r, &i).map(Cow::into_owned)
    }

    #[test]
    fn arithmetic_mixes_ints_and_doubles() {
        assert_eq!(run("cpu * 100 + 1", r#"{"cpu": 0.5}"#), Ok(Value::Float(51.0)));
        assert_eq!(run("a / b", r#"{"a": 7, "b": 2}"#), Ok(Value::Int(3)));
        assert_eq!(run("a / 2.0", r#"{"a": 7}"#), Ok(Value::Float(3.5)));
        assert_eq!(run("cpu > 0", r#"{"cpu": 0.5}"#), Ok(Value::Bool(true)));
        assert_eq!(run("1 == 1.0", "{}"), Ok(Value::Bool(true)));
    }

    #[test]
    fn strings_lists_nested_and_functions() {
        assert_eq!(
            run("host.startsWith('db') && size(host) == 4", r#"{"host": "db-1"}"#),
            Ok(Value::Bool(true))
        );
        assert_eq!(run("region in ['eu', 'us']", r#"{"region": "eu"}"#), Ok(Value::Bool(true)));
        assert_eq!(run("m.a.b + m.l[1]", r#"{"m": {"a": {"b": 1}, "l": [5, 6]}}"#), Ok(Value::Int(7)));
        assert_eq!(run("record['odd name'] * 2", r#"{"odd name": 2}"#), Ok(Value::Int(4)));
        assert_eq!(run("max(a, b, 3)", r#"{"a": 1, "b": 2.5}"#), Ok(Value::Int(3)));
        assert_eq!(run("host.matches('^db-[0-9]+$')", r#"{"host": "db-12"}"#), Ok(Value::Bool(true)));
        assert_eq!(run("has(cpu) ? cpu : -1", r#"{}"#), Ok(Value::Int(-1)));
        assert_eq!(run("has(record.cpu) && has(m.x)", r#"{"cpu": 1, "m": {"x": 0}}"#), Ok(Value::Bool(true)));
        assert_eq!(run("string(n) + '%'", r#"{"n": 5}"#), Ok(Value::Str("5%".into())));
    }

    #[test]
    fn errors_are_values_with_reasons() {
        assert_eq!(run("cpu > 1", "{}"), Err("no such field: cpu".into()));
        assert_eq!(run("host > 1", r#"{"host": "a"}"#), Err("> needs a number, got string \"a\"".into()));
        assert_eq!(run("a / 0", r#"{"a": 1}"#), Err("division by zero".into()));
        assert_eq!(run("a / 0.0", r#"{"a": 1}"#), Err("/ produced inf, not a finite number".into()));
        assert_eq!(run("a + 1", r#"{"a": 9223372036854775807}"#), Err("integer overflow in +".into()));
        assert!(run("nosuch(1)", "{}").unwrap_err().contains("unknown function nosuch()"));
        assert!(run("x.matches('(')", "{}").unwrap_err().contains("invalid regex"));
    }

    #[test]
    fn logical_operators_absorb_errors_like_cel() {
        assert_eq!(run("false && missing > 1", "{}"), Ok(Value::Bool(false)));
        assert_eq!(run("missing > 1 && false", "{}"), Ok(Value::Bool(false)));
        assert_eq!(run("missing > 1 || true", "{}"), Ok(Value::Bool(true)));
        assert!(run("missing > 1 || false", "{}").is_err());
    }
}
