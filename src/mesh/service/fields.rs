//! How body fields are read: leniently, as the NA always read them, so a field of the wrong
//! type never fails the body as a whole. It reads as absent (`text`, `object`,
//! `strings`), or as a value the route refuses with its own error, in its own check
//! order (`Count::Invalid`, `List::Invalid`).

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A string field; anything else reads as absent.
pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Value::deserialize(d)?.as_str().map(str::to_string))
}

/// An object field; anything else reads as empty.
pub(super) fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(m) => m,
        _ => Map::new(),
    })
}

/// A list's strings (other items skipped); anything but a list reads as absent.
pub(super) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => Some(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        _ => None,
    })
}

/// A count such as `validity_hours`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    /// Absent or null.
    #[default]
    Unset,
    Positive(i64),
    /// Zero, negative, fractional, too large, or not a number.
    Invalid,
}

impl Count {
    /// The count, `default` when unset; `None` when invalid.
    pub fn or(self, default: i64) -> Option<i64> {
        match self {
            Count::Unset => Some(default),
            Count::Positive(n) => Some(n),
            Count::Invalid => None,
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => Count::Unset,
            Value::Number(n) => n.as_i64().filter(|n| *n > 0).map_or(Count::Invalid, Count::Positive),
            _ => Count::Invalid,
        })
    }
}

/// How one item of a `List` reads.
pub(super) trait Item: Sized {
    /// `None`: the item makes the list invalid.
    fn read(v: &Value) -> Option<Self>;
}

/// A list field such as `allowed_ports`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) enum List<T> {
    /// Absent or null.
    #[default]
    Unset,
    Items(Vec<T>),
    /// Not a list, or an item that does not read.
    Invalid,
}

impl<'de, T: Item> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<List<T>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Null => List::Unset,
            Value::Array(items) => items
                .iter()
                .map(T::read)
                .collect::<Option<Vec<T>>>()
                .map_or(List::Invalid, List::Items),
            _ => List::Invalid,
        })
    }
}

impl Item for String {
    fn read(v: &Value) -> Option<String> {
        v.as_str().map(str::to_string)
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Port(pub i64);

impl Item for Port {
    fn read(v: &Value) -> Option<Port> {
        v.as_i64().filter(|p| (1..=65535).contains(p)).map(Port)
    }
}

/// A role as an invite names it: any item reads, one that is no string as `""` (which no
/// role prefix matches, so the invite is refused naming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RoleName(pub String);

impl Item for RoleName {
    fn read(v: &Value) -> Option<RoleName> {
        Some(RoleName(v.as_str().unwrap_or("").to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Sample {
        #[serde(deserialize_with = "text")]
        name: Option<String>,
        hours: Count,
        ports: List<Port>,
        roles: List<RoleName>,
        #[serde(deserialize_with = "strings")]
        asked: Option<Vec<String>>,
        #[serde(deserialize_with = "object")]
        routing: Map<String, Value>,
    }

    fn read(v: Value) -> Sample {
        Sample::deserialize(&v).expect("a lenient reading never fails")
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_absent_or_invalid_never_as_an_error() {
        let s = read(json!({}));
        assert_eq!((s.name, s.hours, s.ports, s.asked), (None, Count::Unset, List::Unset, None));
        let s = read(json!({"name": 5, "hours": "5", "ports": [80, "443"], "roles": [1, "role:a"], "asked": "x", "routing": []}));
        assert_eq!((s.name, s.hours, s.ports, s.asked), (None, Count::Invalid, List::Invalid, None));
        assert_eq!(s.roles, List::Items(vec![RoleName(String::new()), RoleName("role:a".into())]));
        assert!(s.routing.is_empty());
        let s = read(json!({"name": "n", "hours": 3, "ports": [1, 65535], "asked": ["a", 2, "b"], "routing": {"max_hops": 2}}));
        assert_eq!(s.name.as_deref(), Some("n"));
        assert_eq!(s.hours.or(9), Some(3));
        assert_eq!(s.ports, List::Items(vec![Port(1), Port(65535)]));
        assert_eq!(s.asked, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(s.routing["max_hops"], 2);
        for bad in [json!(0), json!(-2), json!(2.0), json!(u64::MAX), json!(true), json!([1])] {
            assert_eq!(read(json!({ "hours": bad })).hours, Count::Invalid, "{bad}");
        }
        assert_eq!(read(json!({"hours": null})).hours.or(7), Some(7));
        for bad in [json!([0]), json!([65536]), json!(443), json!("443")] {
            assert_eq!(read(json!({ "ports": bad })).ports, List::Invalid, "{bad}");
        }
    }
}
