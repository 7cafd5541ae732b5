//! `cast`: convert fields to a type. A value that cannot be converted is an
//! error (the record is dead-lettered); absent and null fields are left alone.

use vigil_crds::TimestampFormat;
use vigil_crds::transform::{CastSpec, CastType};

use super::{BuildCtx, Ctx, Transform, field};
use crate::codec::time;
use crate::record::{FieldId, Record, Value};

pub struct Cast {
    fields: Vec<(FieldId, CastType)>,
}

impl Cast {
    pub fn new(spec: &CastSpec, ctx: &mut BuildCtx<'_>) -> Result<Self, String> {
        let fields = spec.fields.iter().map(|(f, t)| Ok((field(ctx, f)?, *t)));
        Ok(Cast { fields: fields.collect::<Result<_, String>>()? })
    }
}

/// Convert one value.
pub fn cast(v: &Value, to: CastType) -> Result<Value, String> {
    let fail = || format!("cannot convert {} to {}", v.describe(), name(to));
    Ok(match (to, v) {
        (_, Value::Null) => Value::Null,
        (CastType::Float, Value::Str(s)) => {
            s.trim().parse::<f64>().ok().filter(|x| x.is_finite()).map(Value::Float).ok_or_else(fail)?
        }
        (CastType::Float, other) => Value::Float(other.as_f64().ok_or_else(fail)?),
        (CastType::Integer, Value::Int(n)) => Value::Int(*n),
        (CastType::Integer, Value::Float(x)) if x.fract() == 0.0 && x.abs() < 9.2e18 => Value::Int(*x as i64),
        (CastType::Integer, Value::Bool(b)) => Value::Int(*b as i64),
        (CastType::Integer, Value::Str(s)) => {
            let t = s.trim();
            t.parse::<i64>()
                .ok()
                .or_else(|| {
                    t.parse::<f64>().ok().filter(|x| x.fract() == 0.0 && x.abs() < 9.2e18).map(|x| x as i64)
                })
                .map(Value::Int)
                .ok_or_else(fail)?
        }
        (CastType::String, Value::Str(s)) => Value::Str(s.clone()),
        (CastType::String, other @ (Value::Int(_) | Value::Float(_) | Value::Bool(_))) => {
            Value::Str(other.to_string().into())
        }
        (CastType::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (CastType::Boolean, Value::Int(0)) => Value::Bool(false),
        (CastType::Boolean, Value::Int(1)) => Value::Bool(true),
        (CastType::Boolean, Value::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "y" | "on" => Value::Bool(true),
            "false" | "0" | "no" | "n" | "off" => Value::Bool(false),
            _ => return Err(fail()),
        },
        (CastType::Timestamp, v) => Value::Int(time::parse(v, TimestampFormat::Auto).map_err(|_| fail())?),
        _ => return Err(fail()),
    })
}

fn name(t: CastType) -> &'static str {
    match t {
        CastType::Float => "float",
        CastType::Integer => "integer",
        CastType::String => "string",
        CastType::Boolean => "boolean",
        CastType::Timestamp => "timestamp",
    }
}

impl Transform for Cast {
    fn apply(&mut self, mut rec: Record, ctx: &mut Ctx<'_>, out: &mut Vec<Record>) -> Result<(), String> {
        for (id, to) in &self.fields {
            if let Some(v) = rec.get_mut(*id) {
                *v = cast(v, *to).map_err(|e| format!("field {:?}: {e}", ctx.interner.name(*id)))?;
            }
        }
        out.push(rec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transforms::testing::{ok, run};

    #[test]
    fn converts_each_type() {
        assert_eq!(cast(&Value::Str(" 2.5 ".into()), CastType::Float), Ok(Value::Float(2.5)));
        assert_eq!(cast(&Value::Float(3.0), CastType::Integer), Ok(Value::Int(3)));
        assert_eq!(cast(&Value::Str("7".into()), CastType::Integer), Ok(Value::Int(7)));
        assert_eq!(cast(&Value::Int(7), CastType::String), Ok(Value::Str("7".into())));
        assert_eq!(cast(&Value::Str("yes".into()), CastType::Boolean), Ok(Value::Bool(true)));
        assert_eq!(
            cast(&Value::Str("2026-01-01T00:00:00Z".into()), CastType::Timestamp),
            Ok(Value::Int(1_767_225_600_000))
        );
        assert_eq!(cast(&Value::Null, CastType::Float), Ok(Value::Null));
    }

    #[test]
    fn refuses_what_does_not_convert() {
        assert_eq!(
            cast(&Value::Float(2.5), CastType::Integer),
            Err("cannot convert number 2.5 to integer".into())
        );
        assert!(cast(&Value::Str("NaN".into()), CastType::Float).is_err());
        assert!(cast(&Value::Str("maybe".into()), CastType::Boolean).is_err());
        let out = run("cast: {fields: {v: float}}", &[r#"{"v": "12"}"#, r#"{"v": "twelve"}"#]);
        assert_eq!(out[0], Ok(r#"{"v":12.0}"#.into()));
        assert_eq!(out[1], Err("field \"v\": cannot convert string \"twelve\" to float".into()));
        assert_eq!(ok(run("cast: {fields: {v: integer}}", &[r#"{"w": 1}"#])), [r#"{"w":1}"#]);
    }
}
