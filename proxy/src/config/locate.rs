//! Where a value sits in a YAML file, so that validation errors can say "line 14, column 13"
//! and not only "routes[0].canary.pool". serde_yaml gives positions for syntax and type
//! errors but not for values it parsed fine; this walks the YAML event stream (yaml-rust2
//! keeps a marker per event) and records one for every node.

use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path such as `routes[0].canary.pool`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn root() -> Path {
        Path(Vec::new())
    }

    pub fn key(&self, k: impl Into<String>) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    pub fn index(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

enum Node {
    Scalar(String, Marker),
    Seq(Vec<Node>, Marker),
    Map(Vec<(Node, Node)>, Marker),
}

impl Node {
    fn marker(&self) -> Marker {
        match self {
            Node::Scalar(_, m) | Node::Seq(_, m) | Node::Map(_, m) => *m,
        }
    }
}

fn node(parser: &mut Parser<std::str::Chars<'_>>, first: (Event, Marker)) -> Option<Node> {
    let (event, mark) = first;
    match event {
        Event::Scalar(value, ..) => Some(Node::Scalar(value, mark)),
        Event::Alias(_) => Some(Node::Scalar(String::new(), mark)),
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                let next = parser.next_token().ok()?;
                if matches!(next.0, Event::SequenceEnd) {
                    return Some(Node::Seq(items, mark));
                }
                items.push(node(parser, next)?);
            }
        }
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            loop {
                let next = parser.next_token().ok()?;
                if matches!(next.0, Event::MappingEnd) {
                    // A block mapping's start event is marked after its first key; the first
                    // key itself is where a reader expects the mapping to be.
                    let mark = entries.first().map_or(mark, |(k, _): &(Node, Node)| k.marker());
                    return Some(Node::Map(entries, mark));
                }
                let key = node(parser, next)?;
                let value_event = parser.next_token().ok()?;
                let value = node(parser, value_event)?;
                entries.push((key, value));
            }
        }
        _ => None,
    }
}

fn document(source: &str) -> Option<Node> {
    let mut parser = Parser::new_from_str(source);
    loop {
        let (event, mark) = parser.next_token().ok()?;
        match event {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => return None,
            other => return node(&mut parser, (other, mark)),
        }
    }
}

/// (line, column), both from 1, of the value at `path`, or of the deepest part of the path
/// that exists (so a missing key points at the mapping that lacks it).
pub fn locate(source: &str, path: &Path) -> Option<(usize, usize)> {
    let root = document(source)?;
    let mut current = &root;
    for seg in &path.0 {
        let next = match (seg, current) {
            (Seg::Key(k), Node::Map(entries, _)) => entries
                .iter()
                .find(|(key, _)| matches!(key, Node::Scalar(s, _) if s == k))
                .map(|(_, v)| v),
            (Seg::Index(i), Node::Seq(items, _)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => current = n,
            None => break,
        }
    }
    let m = current.marker();
    // yaml-rust2 counts lines from 1 and columns from 0.
    Some((m.line(), m.col() + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "pools:\n  a: {local: {model: m, version: 1}}\nroutes:\n  - model: m\n    stable: a\n    canary:\n      pool: b\n      weight: 150\n";

    #[test]
    fn finds_nested_values() {
        let p = Path::root().key("routes").index(0).key("canary").key("weight");
        assert_eq!(p.to_string(), "routes[0].canary.weight");
        assert_eq!(locate(DOC, &p), Some((8, 15)));
        assert_eq!(
            locate(
                DOC,
                &Path::root().key("pools").key("a").key("local").key("version")
            ),
            Some((2, 34))
        );
    }

    #[test]
    fn a_missing_key_points_at_its_parent() {
        let p = Path::root().key("routes").index(0).key("shadows");
        assert_eq!(locate(DOC, &p), Some((4, 5)));
    }
}
