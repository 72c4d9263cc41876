//! Where a value sits in a YAML file, so that validation errors can say "line 14, column 13"
//! and not only "routes[0].canary.pool". yaml_serde gives positions for syntax and type errors
//! but keeps none for values it parsed fine, so this asks the same parser again: it walks the
//! document to the value at a path and raises an error there, which yaml_serde marks with the
//! value's line and column. One parser reads the file, whether for its values or for where
//! they are.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

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

/// The message of the error raised at the value sought (never shown).
const HERE: &str = "\u{0}here";

/// (line, column), both from 1, of the value at `path`, or of the deepest part of the path
/// that exists (so a missing key points at the mapping that lacks it). A mapping is where its
/// first key is.
pub fn locate(source: &str, path: &Path) -> Option<(usize, usize)> {
    let mut depth = path.0.len();
    loop {
        let seek = Seek {
            path: &path.0[..depth],
            depth: 0,
        };
        match seek.deserialize(yaml_serde::Deserializer::from_str(source)) {
            // The path ends `missing` segments early: look for the part that exists.
            Ok(Some(exists)) if exists < depth => depth = exists,
            Ok(_) => return None,
            Err(e) if e.to_string().contains(HERE) => {
                let at = e.location()?;
                return Some((at.line(), at.column()));
            }
            Err(_) => return None,
        }
    }
}

/// Walks to `path`; `Ok(Some(n))` when only its first `n` segments exist.
struct Seek<'p> {
    path: &'p [Seg],
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<Self::Value, E> { self.scalar() })*
    };
}

impl Seek<'_> {
    /// A scalar: the value sought, or a path that goes on where the document does not.
    fn scalar<E: de::Error>(self) -> Result<Option<usize>, E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(Some(self.depth))
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar()
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.scalar()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            // The mapping itself: where its first key is (the key raises the error, so it
            // carries the key's position), or, when it is empty, where it starts.
            let first_key = Seek {
                path: &[],
                depth: self.depth,
            };
            map.next_key_seed(first_key)?;
            return Err(de::Error::custom(HERE));
        };
        let Seg::Key(want) = first else {
            return Ok(Some(self.depth));
        };
        while let Some(key) = map.next_key::<yaml_serde::Value>()? {
            if key.as_str() == Some(want.as_str()) {
                let inner = Seek {
                    path: rest,
                    depth: self.depth + 1,
                };
                return map.next_value_seed(inner);
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(Some(self.depth))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Some((first, rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        let Seg::Index(want) = first else {
            return Ok(Some(self.depth));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(Some(self.depth));
            }
        }
        let inner = Seek {
            path: rest,
            depth: self.depth + 1,
        };
        Ok(seq.next_element_seed(inner)?.unwrap_or(Some(self.depth)))
    }
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

    #[test]
    fn a_mapping_is_where_its_first_key_is_and_a_short_list_where_it_starts() {
        assert_eq!(locate(DOC, &Path::root().key("pools").key("a")), Some((2, 7)));
        assert_eq!(locate(DOC, &Path::root().key("routes").index(3)), Some((4, 3)));
        assert_eq!(
            locate("a: [1, 2]\n", &Path::root().key("a").index(1)),
            Some((1, 8))
        );
        assert_eq!(locate("a: {}\n", &Path::root().key("a").key("b")), Some((1, 4)));
    }
}
