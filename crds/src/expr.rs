//! The expression language of `filter` and `derive`: CEL syntax, parsed
//! here so `vigil validate`, the operator and the runner agree on what an
//! expression means and report syntax errors before anything runs.
//!
//! Supported: literals (`1`, `2.5`, `"s"`, `'s'`, `true`, `null`, lists
//! `[1, 2]`), record fields as variables (`cpu`), `record` for the whole
//! record (`record["odd name"]`, `has(record.cpu)`), member and index access,
//! `! - * / % + - < <= > >= == != in && || ?:`, calls `f(x)` and methods
//! `x.f(y)`. Which functions exist is the evaluator's business (runner).
//!
//! One deliberate difference from CEL: integers and doubles mix freely in
//! arithmetic and comparison (`cpu > 0` works when `cpu` is 0.5), because
//! JSON does not tell them apart reliably.

use std::collections::BTreeSet;
use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant.
    Lit(Lit),
    /// A record field used as a variable.
    Field(String),
    /// The whole record (`record`).
    Record,
    /// `a.b`
    Member(Box<Expr>, String),
    /// `a[b]`
    Index(Box<Expr>, Box<Expr>),
    /// `!a`, `-a`
    Unary(UnOp, Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `c ? a : b`
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `f(args)` (receiver `None`) or `x.f(args)`.
    Call { name: String, receiver: Option<Box<Expr>>, args: Vec<Expr> },
    /// `[a, b]`
    List(Vec<Expr>),
    /// `has(a.b)`: whether the field is present.
    Has(Box<Expr>),
}

/// A constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `null`
    Null,
    /// `true`, `false`
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// A string.
    Str(String),
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    /// `!`
    Not,
    /// `-`
    Neg,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A syntax error, with the 1-based column where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    Ident(String),
    Op(&'static str),
    End,
}

const OPS: &[&str] = &[
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",", "(", ")",
    "[", "]",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, m: String| ParseError { column: i + 1, message: m };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let mut s = String::new();
            let mut float = false;
            while i < chars.len() {
                let d = chars[i];
                if d.is_ascii_digit() {
                    s.push(d);
                } else if d == '.' && !float && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                    float = true;
                    s.push(d);
                } else if (d == 'e' || d == 'E')
                    && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit() || *n == '-' || *n == '+')
                {
                    float = true;
                    s.push(d);
                    i += 1;
                    s.push(chars[i]);
                } else {
                    break;
                }
                i += 1;
            }
            // CEL's unsigned suffix: accepted, read as a plain integer.
            if !float && chars.get(i).is_some_and(|c| *c == 'u' || *c == 'U') {
                i += 1;
            }
            let tok = if float {
                Tok::Float(s.parse().map_err(|_| err(start, format!("invalid number {s:?}")))?)
            } else {
                Tok::Int(s.parse().map_err(|_| err(start, format!("integer {s} out of range")))?)
            };
            out.push((tok, start));
            continue;
        }
        if c == '"' || c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(err(start, "unterminated string".into()));
                };
                i += 1;
                if d == c {
                    break;
                }
                if d == '\\' {
                    let Some(&e) = chars.get(i) else {
                        return Err(err(start, "unterminated string".into()));
                    };
                    i += 1;
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' | '"' | '\'' => e,
                        other => return Err(err(i - 2, format!("unknown escape \\{other}"))),
                    });
                } else {
                    s.push(d);
                }
            }
            out.push((Tok::Str(s), start));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut s = String::new();
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                s.push(chars[i]);
                i += 1;
            }
            out.push((Tok::Ident(s), start));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let Some(op) = OPS.iter().find(|op| rest.starts_with(**op)) else {
            return Err(err(i, format!("unexpected character {c:?}")));
        };
        i += op.chars().count();
        out.push((Tok::Op(op), start));
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }
    fn column(&self) -> usize {
        self.toks[self.pos].1 + 1
    }
    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { column: self.column(), message: message.into() })
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Tok::Op(o) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        if self.eat(op) {
            Ok(())
        } else {
            let found = describe(self.peek());
            self.error(format!("expected '{op}', found {found}"))
        }
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let c = self.or()?;
        if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }

    fn binary_level(
        &mut self,
        ops: &[(&str, BinOp)],
        next: fn(&mut Self) -> Result<Expr, ParseError>,
    ) -> Result<Expr, ParseError> {
        let mut left = next(self)?;
        'outer: loop {
            for (tok, op) in ops {
                if self.eat(tok) {
                    let right = next(self)?;
                    left = Expr::Binary(*op, Box::new(left), Box::new(right));
                    continue 'outer;
                }
            }
            return Ok(left);
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.binary_level(&[("||", BinOp::Or)], Self::and)
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        self.binary_level(&[("&&", BinOp::And)], Self::rel)
    }
    fn rel(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.add()?;
        loop {
            let op = match self.peek() {
                Tok::Op("==") => BinOp::Eq,
                Tok::Op("!=") => BinOp::Ne,
                Tok::Op("<") => BinOp::Lt,
                Tok::Op("<=") => BinOp::Le,
                Tok::Op(">") => BinOp::Gt,
                Tok::Op(">=") => BinOp::Ge,
                Tok::Ident(s) if s == "in" => BinOp::In,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.add()?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }
    fn add(&mut self) -> Result<Expr, ParseError> {
        self.binary_level(&[("+", BinOp::Add), ("-", BinOp::Sub)], Self::mul)
    }
    fn mul(&mut self) -> Result<Expr, ParseError> {
        self.binary_level(&[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)], Self::unary)
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!") {
            return Ok(Expr::Unary(UnOp::Not, Box::new(self.unary()?)));
        }
        if self.eat("-") {
            // Fold negative literals so `-9223372036854775808`-style bounds and
            // plain `-1` stay constants.
            return Ok(match self.unary()? {
                Expr::Lit(Lit::Int(n)) => Expr::Lit(Lit::Int(-n)),
                Expr::Lit(Lit::Float(x)) => Expr::Lit(Lit::Float(-x)),
                e => Expr::Unary(UnOp::Neg, Box::new(e)),
            });
        }
        self.member()
    }
    fn args(&mut self, close: &str) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        if self.eat(close) {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(close) {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }
    fn member(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Tok::Ident(name) = self.peek().clone() else {
                    return self.error(format!("expected a name after '.', found {}", describe(self.peek())));
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args(")")?;
                    e = Expr::Call { name, receiver: Some(Box::new(e)), args };
                } else {
                    e = Expr::Member(Box::new(e), name);
                }
            } else if self.eat("[") {
                let idx = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }
    fn primary(&mut self) -> Result<Expr, ParseError> {
        let tok = self.peek().clone();
        self.pos += 1;
        match tok {
            Tok::Int(n) => Ok(Expr::Lit(Lit::Int(n))),
            Tok::Float(x) => Ok(Expr::Lit(Lit::Float(x))),
            Tok::Str(s) => Ok(Expr::Lit(Lit::Str(s))),
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => Ok(Expr::List(self.args("]")?)),
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Lit(Lit::Bool(true))),
                "false" => Ok(Expr::Lit(Lit::Bool(false))),
                "null" => Ok(Expr::Lit(Lit::Null)),
                "record" => Ok(Expr::Record),
                _ if self.eat("(") => {
                    let args = self.args(")")?;
                    if name == "has" {
                        return match <[Expr; 1]>::try_from(args) {
                            Ok([arg @ (Expr::Member(..) | Expr::Field(_))]) => Ok(Expr::Has(Box::new(arg))),
                            _ => {
                                self.pos -= 1;
                                self.error("has() takes one field, e.g. has(record.cpu)")
                            }
                        };
                    }
                    Ok(Expr::Call { name, receiver: None, args })
                }
                _ => Ok(Expr::Field(name)),
            },
            other => {
                self.pos -= 1;
                self.error(format!("expected a value, found {}", describe(&other)))
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Int(n) => format!("number {n}"),
        Tok::Float(x) => format!("number {x}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::End => "the end of the expression".into(),
    }
}

/// Parse an expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0 };
    if matches!(p.peek(), Tok::End) {
        return p.error("the expression is empty");
    }
    let e = p.expr()?;
    if !matches!(p.peek(), Tok::End) {
        return p.error(format!("unexpected {} after a complete expression", describe(p.peek())));
    }
    Ok(e)
}

/// The functions expressions may call: (name, arguments counting the
/// receiver of `x.f()`, or `None` for one or more). The runner implements
/// exactly these (its tests check).
pub const FUNCTIONS: &[(&str, Option<usize>)] = &[
    ("size", Some(1)),
    ("int", Some(1)),
    ("double", Some(1)),
    ("string", Some(1)),
    ("abs", Some(1)),
    ("min", None),
    ("max", None),
    ("sqrt", Some(1)),
    ("log", Some(1)),
    ("log10", Some(1)),
    ("exp", Some(1)),
    ("pow", Some(2)),
    ("floor", Some(1)),
    ("ceil", Some(1)),
    ("round", Some(1)),
    ("startsWith", Some(2)),
    ("endsWith", Some(2)),
    ("contains", Some(2)),
    ("matches", Some(2)),
    ("lowerAscii", Some(1)),
    ("upperAscii", Some(1)),
    ("trim", Some(1)),
];

/// What an expression gives, as far as its shape tells (a field's type is
/// only known per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Number,
    Text,
    List,
    /// A field, `null`, or a mix.
    Unknown,
}

impl Kind {
    /// For messages: "a number".
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Bool => "true or false",
            Kind::Number => "a number",
            Kind::Text => "a string",
            Kind::List => "a list",
            Kind::Unknown => "a value",
        }
    }
}

impl Expr {
    /// Every call names a function that exists, with as many arguments as
    /// it takes, and every `matches()` pattern written as a string compiles:
    /// the runner refuses the same at start, with the same messages.
    pub fn check_calls(&self) -> Result<(), String> {
        if let Expr::Call { name, receiver, args } = self {
            let Some((_, arity)) = FUNCTIONS.iter().find(|(n, _)| n == name) else {
                let names: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
                return Err(format!("unknown function {name}() (available: {})", names.join(", ")));
            };
            let count = args.len() + usize::from(receiver.is_some());
            let ok = match arity {
                Some(n) => count == *n,
                None => count > 0,
            };
            if !ok {
                return Err(format!("{name}() takes {} argument(s), got {count}", arity.unwrap_or(1)));
            }
            if name == "matches" {
                let pattern = if receiver.is_some() { args.first() } else { args.get(1) };
                if let Some(Expr::Lit(Lit::Str(p))) = pattern {
                    regex::Regex::new(p).map_err(|e| format!("invalid regex {p:?}: {e}"))?;
                }
            }
        }
        self.children().into_iter().try_for_each(Expr::check_calls)
    }

    fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Lit(_) | Expr::Field(_) | Expr::Record => vec![],
            Expr::Member(a, _) | Expr::Unary(_, a) | Expr::Has(a) => vec![a],
            Expr::Index(a, b) | Expr::Binary(_, a, b) => vec![a, b],
            Expr::Cond(c, a, b) => vec![c, a, b],
            Expr::Call { receiver, args, .. } => receiver.iter().map(|r| &**r).chain(args.iter()).collect(),
            Expr::List(items) => items.iter().collect(),
        }
    }

    /// What the expression gives, from its shape.
    pub fn kind(&self) -> Kind {
        match self {
            Expr::Lit(Lit::Bool(_)) | Expr::Has(_) => Kind::Bool,
            Expr::Lit(Lit::Int(_) | Lit::Float(_)) => Kind::Number,
            Expr::Lit(Lit::Str(_)) => Kind::Text,
            Expr::List(_) => Kind::List,
            Expr::Lit(Lit::Null) | Expr::Field(_) | Expr::Record | Expr::Member(..) | Expr::Index(..) => {
                Kind::Unknown
            }
            Expr::Unary(UnOp::Not, _) => Kind::Bool,
            Expr::Unary(UnOp::Neg, _) => Kind::Number,
            Expr::Binary(op, a, b) => match op {
                BinOp::Or
                | BinOp::And
                | BinOp::Eq
                | BinOp::Ne
                | BinOp::Lt
                | BinOp::Le
                | BinOp::Gt
                | BinOp::Ge
                | BinOp::In => Kind::Bool,
                BinOp::Add => match (a.kind(), b.kind()) {
                    (Kind::Number, Kind::Number) => Kind::Number,
                    (Kind::Text, _) | (_, Kind::Text) => Kind::Text,
                    (Kind::List, _) | (_, Kind::List) => Kind::List,
                    _ => Kind::Unknown,
                },
                BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => Kind::Number,
            },
            Expr::Cond(_, a, b) => {
                let (a, b) = (a.kind(), b.kind());
                if a == b { a } else { Kind::Unknown }
            }
            Expr::Call { name, .. } => match name.as_str() {
                "startsWith" | "endsWith" | "contains" | "matches" => Kind::Bool,
                "string" | "lowerAscii" | "upperAscii" | "trim" => Kind::Text,
                "size" | "int" | "double" | "abs" | "min" | "max" | "sqrt" | "log" | "log10" | "exp"
                | "pow" | "floor" | "ceil" | "round" => Kind::Number,
                _ => Kind::Unknown,
            },
        }
    }

    /// The record fields the expression reads: variables, and `record.x`
    /// or `record["x"]`. `has(...)` arguments are presence tests, not reads,
    /// and are left out.
    pub fn fields(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_fields(&mut out);
        out
    }

    fn collect_fields(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Field(f) => {
                out.insert(f.clone());
            }
            Expr::Member(base, name) if **base == Expr::Record => {
                out.insert(name.clone());
            }
            Expr::Index(base, idx) if **base == Expr::Record => {
                if let Expr::Lit(Lit::Str(name)) = &**idx {
                    out.insert(name.clone());
                } else {
                    idx.collect_fields(out);
                }
            }
            Expr::Lit(_) | Expr::Record | Expr::Has(_) => {}
            Expr::Member(base, _) => base.collect_fields(out),
            Expr::Index(a, b) | Expr::Binary(_, a, b) => {
                a.collect_fields(out);
                b.collect_fields(out);
            }
            Expr::Unary(_, a) => a.collect_fields(out),
            Expr::Cond(c, a, b) => {
                c.collect_fields(out);
                a.collect_fields(out);
                b.collect_fields(out);
            }
            Expr::Call { receiver, args, .. } => {
                if let Some(r) = receiver {
                    r.collect_fields(out);
                }
                args.iter().for_each(|a| a.collect_fields(out));
            }
            Expr::List(items) => items.iter().for_each(|a| a.collect_fields(out)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: &str) -> Vec<String> {
        parse(src).unwrap().fields().into_iter().collect()
    }

    #[test]
    fn precedence_follows_cel() {
        let e = parse("a + b * 2 > 3 && !c || d").unwrap();
        let Expr::Binary(BinOp::Or, left, _) = e else { panic!("|| binds loosest") };
        let Expr::Binary(BinOp::And, cmp, _) = *left else { panic!("&& next") };
        let Expr::Binary(BinOp::Gt, sum, _) = *cmp else { panic!("> next") };
        assert!(
            matches!(*sum, Expr::Binary(BinOp::Add, _, ref r) if matches!(**r, Expr::Binary(BinOp::Mul, ..)))
        );
    }

    #[test]
    fn fields_are_variables_and_record_members() {
        assert_eq!(fields("cpu > 0.5 && host.startsWith('db') && size(tags) > 1"), ["cpu", "host", "tags"]);
        assert_eq!(fields("record['odd name'] + record.x"), ["odd name", "x"]);
        assert_eq!(fields("has(record.cpu) ? cpu : 0"), ["cpu"]);
        assert!(fields("1e9 * 2.5e-3 + -4").is_empty());
    }

    #[test]
    fn literals() {
        assert_eq!(parse("-3").unwrap(), Expr::Lit(Lit::Int(-3)));
        assert_eq!(parse("1.5e3").unwrap(), Expr::Lit(Lit::Float(1500.0)));
        assert_eq!(parse(r#""a\"b""#).unwrap(), Expr::Lit(Lit::Str("a\"b".into())));
        assert_eq!(parse("'x' in ['x', 'y']").unwrap().fields().len(), 0);
    }

    #[test]
    fn errors_name_the_column() {
        let e = parse("cpu > ").unwrap_err();
        assert_eq!(e.to_string(), "column 7: expected a value, found the end of the expression");
        let e = parse("(cpu > 1").unwrap_err();
        assert_eq!(e.to_string(), "column 9: expected ')', found the end of the expression");
        let e = parse("cpu # 2").unwrap_err();
        assert_eq!(e.to_string(), "column 5: unexpected character '#'");
        let e = parse("a b").unwrap_err();
        assert!(e.to_string().starts_with("column 3: unexpected 'b'"), "{e}");
        assert!(parse("'open").is_err());
        assert!(parse("").is_err());
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn calls(src: &str) -> Result<(), String> {
        parse(src).unwrap().check_calls()
    }

    #[test]
    fn unknown_functions_wrong_arity_and_bad_patterns_are_refused() {
        assert!(calls("startsWith(host, \"db\") && abs(cpu) > 1").is_ok());
        assert!(calls("host.startsWith(\"db\")").is_ok(), "a receiver counts as an argument");
        let e = calls("avg(cpu) > 1").unwrap_err();
        assert!(e.starts_with("unknown function avg() (available: size, int,"), "{e}");
        assert_eq!(calls("pow(cpu)").unwrap_err(), "pow() takes 2 argument(s), got 1");
        assert_eq!(calls("min()").unwrap_err(), "min() takes 1 argument(s), got 0");
        assert!(calls("matches(host, \"[\")").unwrap_err().starts_with("invalid regex \"[\""));
        assert!(calls("x ? sqrt(1, 2) : 0").is_err(), "nested calls are checked");
    }

    #[test]
    fn kinds_follow_the_shape() {
        let k = |s: &str| parse(s).unwrap().kind();
        assert_eq!(k("cpu > 1 && load < 2"), Kind::Bool);
        assert_eq!(k("cpu * 2"), Kind::Number);
        assert_eq!(k("lowerAscii(host)"), Kind::Text);
        assert_eq!(k("\"a\" + host"), Kind::Text);
        assert_eq!(k("cpu"), Kind::Unknown, "a field's type is per record");
        assert_eq!(k("flag ? 1 : 2"), Kind::Number);
        assert_eq!(k("flag ? 1 : \"x\""), Kind::Unknown);
        assert_eq!(k("has(record.x)"), Kind::Bool);
    }
}
