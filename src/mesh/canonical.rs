//! Genesis Mesh's canonical JSON, the bytes every signature covers: Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True)`. Keys sorted
//! by code point, no whitespace, non-ASCII and control characters as `\uXXXX` (lowercase
//! hex, surrogate pairs above the BMP), floats in Python's `repr` form.

use std::borrow::Cow;

use serde_json::Value;

/// Parses JSON whose canonical form must match Python's: serde_json reads an integer
/// beyond 64 bits as a float (Python keeps it exact, so the two would sign different
/// bytes), which is refused with an error that names it; `-0` is read as the integer 0,
/// as Python reads it (serde_json would make it the float `-0.0`). Floats round-trip
/// exactly (serde_json's `float_roundtrip`).
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let v: Value = serde_json::from_slice(bytes)?;
    match integers_as_python(bytes)? {
        Cow::Borrowed(_) => Ok(v),
        Cow::Owned(rewritten) => serde_json::from_slice(&rewritten),
    }
}

/// Checks every integer of valid JSON `text` fits in 64 bits; rewrites `-0` as ` 0`.
fn integers_as_python(text: &[u8]) -> Result<Cow<'_, [u8]>, serde_json::Error> {
    use serde::de::Error;
    let mut out = Cow::Borrowed(text);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len() && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = &text[start..i];
                if token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    continue;
                }
                if token == b"-0" {
                    out.to_mut()[start] = b' ';
                    continue;
                }
                // Valid JSON: the token is ASCII digits with an optional sign.
                let digits = String::from_utf8_lossy(token);
                let fits = if token[0] == b'-' {
                    digits.parse::<i64>().is_ok()
                } else {
                    digits.parse::<u64>().is_ok()
                };
                if !fits {
                    return Err(serde_json::Error::custom(format!(
                        "the integer {digits} does not fit in 64 bits (netsy's canonical JSON supports -2^63 to 2^64-1)"
                    )));
                }
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// The canonical bytes of `v`.
pub fn to_vec(v: &Value) -> Vec<u8> {
    to_string(v).into_bytes()
}

pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                out.push_str(&python_float(f));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Python sorts str keys by code point; UTF-8 byte order is the same order.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip; exponent form (sign and
/// at least two digits) below 1e-4 and from 1e16 up; otherwise positional with a `.0`
/// when integral.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e17", "1e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..16).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // The value is 0.d1d2d3… × 10^(exp+1).
    let point = exp + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_follow_python_repr() {
        for (f, want) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (-2.5, "-2.5"),
            (1e15, "1000000000000000.0"),
            (1700000000.123456, "1700000000.123456"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(f), want, "{f}");
        }
    }

    #[test]
    fn strings_are_ensure_ascii() {
        let v = json!({"b": "é\u{1F600}\"\\/\n\u{1}\u{7f}", "a": [1, true, null, 0.5]});
        assert_eq!(
            to_string(&v),
            r#"{"a":[1,true,null,0.5],"b":"\u00e9\ud83d\ude00\"\\/\n\u0001\u007f"}"#
        );
    }

    /// Integers beyond 64 bits became floats (Python
    /// keeps them exact: another canonical form, another signature), `-0` became `-0.0`
    /// (Python: `0`), and some floats did not parse back to the same value.
    #[test]
    fn integers_read_as_python_reads_them_and_floats_round_trip() {
        let big = from_slice(br#"{"n": 18446744073709551616}"#).expect_err("refused").to_string();
        assert!(big.contains("18446744073709551616") && big.contains("64 bits"), "{big}");
        assert!(from_slice(b"[-9223372036854775809]").is_err());
        let v = from_slice(br#"{"max": 18446744073709551615, "min": -9223372036854775808, "s": "-0 1e999 18446744073709551616"}"#)
            .expect("fits");
        assert_eq!(
            to_string(&v),
            r#"{"max":18446744073709551615,"min":-9223372036854775808,"s":"-0 1e999 18446744073709551616"}"#
        );
        assert!(
            serde_json::from_slice::<Value>(b"-0").expect("json").is_f64(),
            "why `-0` is rewritten"
        );
        assert_eq!(to_string(&from_slice(b"[-0, -0.0, 0, -0e0]").expect("zeros")), "[0,-0.0,0,-0.0]");
        // The first four read one ULP off without serde_json's `float_roundtrip`.
        for text in [
            "1.5777777777770001",
            "117.63331139400017",
            "122.416294033786585",
            "0.09144338512092887",
            "2.2250738585072011e-308",
            "9007199254740993.0",
            "0.30000000000000004",
            "1.7976931348623157e308",
            "5e-324",
        ] {
            let v = from_slice(text.as_bytes()).expect("float");
            let f = v.as_f64().expect("f64");
            assert_eq!(f, text.parse::<f64>().expect("std"), "{text}");
            assert_eq!(python_float(f).parse::<f64>().expect("back"), f, "{text}");
            assert_eq!(from_slice(to_string(&v).as_bytes()).expect("again"), v, "{text}");
        }
    }

    #[test]
    fn keys_sort_by_code_point_at_every_level() {
        let v = json!({"z": {"b": 1, "a": 2}, "B": 0, "a": -3});
        assert_eq!(to_string(&v), r#"{"B":0,"a":-3,"z":{"a":2,"b":1}}"#);
    }
}
