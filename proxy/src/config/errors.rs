//! How a refused file is reported: every problem at once, each with its file, line, column
//! and dotted path (`routes[0].canary.weight`), and the range checks that add them.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};

use super::locate::{self, Path};

/// A problem in a config file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path to the value (`routes[0].canary.weight`); empty for file-level errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

/// Collects errors against one source file, locating each.
pub struct Errors<'a> {
    file: &'a FsPath,
    source: &'a str,
    pub list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub fn new(file: &'a FsPath, source: &'a str) -> Self {
        Errors {
            file,
            source,
            list: Vec::new(),
        }
    }

    pub fn add(&mut self, path: &Path, message: impl Into<String>) {
        let (line, column) =
            locate::locate(self.source, path).map_or((None, None), |(l, c)| (Some(l), Some(c)));
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// A yaml_serde error (syntax, wrong type, unknown field) as a located [`ConfigError`].
pub fn yaml_error(file: &FsPath, e: &yaml_serde::Error) -> ConfigError {
    let location = e.location();
    // yaml_serde prefixes its message with the path and suffixes the position; keep the text.
    let message = e.to_string();
    let message = match message.rsplit_once(" at line ") {
        Some((head, _)) => head.to_string(),
        None => message,
    };
    ConfigError {
        file: file.to_path_buf(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        path: String::new(),
        message,
    }
}

/// The top-level sections a config cannot do without (`FileConfig`'s fields without a default).
const REQUIRED_SECTIONS: [&str; 4] = ["tls", "auth", "pools", "routes"];

/// Every required section the text lacks, as one error, when it lacks more than one: the
/// decoder stops at the first, and a file written from scratch would then take one
/// `gateway check` per missing section.
pub fn missing_sections(file: &FsPath, source: &str) -> Option<ConfigError> {
    let value: yaml_serde::Value = yaml_serde::from_str(source).ok()?;
    let map = value.as_mapping()?;
    let missing: Vec<String> = REQUIRED_SECTIONS
        .iter()
        .filter(|k| !map.contains_key(**k))
        .map(|k| format!("`{k}`"))
        .collect();
    (missing.len() > 1).then(|| ConfigError {
        file: file.to_path_buf(),
        line: Some(1),
        column: Some(1),
        path: String::new(),
        message: format!(
            "missing fields {}: each of these sections is required (the repository's routes.yaml has them all; docs/configuration.md)",
            missing.join(", ")
        ),
    })
}

/// Every problem of a refused file, one per line with its place (logs, `gateway check`).
pub fn format_errors(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    format!("{} problem(s):\n{}", errors.len(), lines.join("\n"))
}

/// A file's text, or the error that names it.
pub fn read_source(file: &FsPath) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(file).map_err(|e| {
        vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })
}

pub(crate) fn positive(errors: &mut Errors, v: i64, min: i64, max: i64, path: &Path) -> usize {
    if v < min || v > max {
        errors.add(path, format!("must be between {min} and {max}, got {v}"));
        return min.max(0) as usize;
    }
    v as usize
}

pub(crate) fn percent(errors: &mut Errors, v: i64, path: &Path) -> u8 {
    if !(0..=100).contains(&v) {
        errors.add(path, format!("must be between 0 and 100, got {v}"));
        return 0;
    }
    v as u8
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
