//! A YAML document as a tree of nodes that remember where they were written.
//!
//! `serde-saphyr` parses (panic-free, with a budget that bounds what a hostile file can cost:
//! nesting depth, alias expansion, node count); we keep every node's position so the
//! validators in this module's siblings can report *all* problems with file:line:column, not
//! just the first one that a typed `Deserialize` would stop at.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Spanned};

use super::diag::Pos;

/// Largest limits file accepted, in bytes. Real files are a few KiB; this only stops a
/// mistaken `--config /var/log` from eating memory.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer (wide enough for any YAML integer a person writes).
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A string scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// The YAML type, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The entries of a mapping, if this is one.
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The string value of a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks a key up in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            pos: Pos {
                line: spanned.referenced.line(),
                column: spanned.referenced.column(),
            },
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

/// Why a file could not be read as YAML at all.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// Where the parser stopped, when it knows.
    pub pos: Option<Pos>,
    /// The parser's message, on one line.
    pub message: String,
}

/// Parses one YAML document into a [`Node`] tree, with YAML 1.2 core scalars. Duplicate keys
/// are an error (a second `value:` silently winning is exactly the kind of surprise a limits
/// file must not have). The loader reads files with [`parse_documents`].
#[cfg(test)]
pub fn parse(text: &str) -> Result<Node, ParseError> {
    check_size(text)?;
    serde_saphyr::from_str_with_options::<Node>(text, options()).map_err(parse_error)
}

/// Parses every YAML document of a file (separated by `---`), in file order, with the same
/// rules as [`parse`]. Positions are those of the whole file. Empty documents (a trailing
/// `---`) are skipped, unless every document is empty (the first is then returned, so the
/// caller can say where it is).
pub fn parse_documents(text: &str) -> Result<Vec<Node>, ParseError> {
    check_size(text)?;
    let docs: Vec<Node> =
        serde_saphyr::from_multiple_with_options::<Node>(text, options()).map_err(parse_error)?;
    let first = docs.first().cloned();
    let docs: Vec<Node> = docs
        .into_iter()
        .filter(|d| d.value != Value::Null)
        .collect();
    Ok(if docs.is_empty() {
        first.into_iter().collect()
    } else {
        docs
    })
}

fn check_size(text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ParseError {
            pos: None,
            message: format!("file is larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(())
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::Error,
        // YAML 1.1 read `n`, `no`, `on`, `off` as booleans: `name: n` must stay a name.
        strict_booleans: true,
        // `client: 007` is an id, not the number 7.
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
        // A real limits file has a few hundred nodes and no aliases; these bounds leave
        // room for big ones while a hostile file is refused in milliseconds.
        budget: serde_saphyr::budget! {
            max_depth: 64,
            max_aliases: 1_000,
            max_nodes: 200_000,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 200_000,
        },
    }
}

fn parse_error(e: serde_saphyr::Error) -> ParseError {
    let pos = e.location().map(|l| Pos {
        line: l.line(),
        column: l.column(),
    });
    ParseError {
        pos,
        message: first_line(&e.without_snippet().to_string()),
    }
}

/// The parser's rendered message may carry a source snippet; our diagnostics print the
/// position themselves, so keep only the first meaningful line.
fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_positions() {
        let n = parse("a:\n  b: 10\n  c: [x, \"y\"]\n").unwrap();
        let b = n.get("a").unwrap().get("b").unwrap();
        assert_eq!(b.value, Value::Int(10));
        assert_eq!(b.pos, Pos { line: 2, column: 6 });
        let c = n.get("a").unwrap().get("c").unwrap();
        match &c.value {
            Value::Seq(items) => {
                assert_eq!(items[1].value, Value::Str("y".into()));
                assert_eq!(items[1].pos.line, 3);
            }
            other => panic!("expected a list, got {other:?}"),
        }
    }

    #[test]
    fn keys_have_positions_too() {
        let n = parse("first: 1\nsecond: 2\n").unwrap();
        let (k, _) = &n.as_map().unwrap()[1];
        assert_eq!(k.as_str(), Some("second"));
        assert_eq!(k.pos.line, 2);
    }

    #[test]
    fn duplicate_keys_are_rejected_with_position() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
        assert!(err.message.to_lowercase().contains("duplicate"), "{err:?}");
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&doc).is_err());
    }

    #[test]
    fn yaml_1_1_booleans_and_leading_zeros_stay_strings() {
        let n = parse("a: n\nb: off\nc: 007\nd: true\n").unwrap();
        assert_eq!(n.get("a").unwrap().value, Value::Str("n".into()));
        assert_eq!(n.get("b").unwrap().value, Value::Str("off".into()));
        assert_eq!(n.get("c").unwrap().value, Value::Str("007".into()));
        assert_eq!(n.get("d").unwrap().value, Value::Bool(true));
    }

    #[test]
    fn several_documents_keep_file_positions() {
        let docs = parse_documents("---\na: 1\n---\n# only a comment\n---\nb: 2\n---\n").unwrap();
        assert_eq!(docs.len(), 2, "{docs:?}");
        assert_eq!(docs[1].get("b").unwrap().pos.line, 6);
        assert!(parse_documents("a: 1\n---\nb: [\n").is_err());
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
    }
}
