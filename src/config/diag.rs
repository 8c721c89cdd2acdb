//! Diagnostics: every configuration problem carries its file, line, column and field path,
//! so an operator can fix a file without guessing. Owns nothing but data and formatting.

use std::fmt;

use serde::Serialize;

/// Whether a diagnostic stops the configuration from loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is rejected.
    Error,
    /// The file loads; a default or a construct may surprise.
    Warning,
}

/// A position in a source file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: u64,
    /// Column, starting at 1.
    pub column: u64,
}

/// One problem found in a limits file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file as it was named on the command line (or found in a directory).
    pub file: String,
    /// Where in the file, when known (an unreadable file has no position).
    pub pos: Option<Pos>,
    /// The field path, e.g. `kcse_rate_limits.endpoints[0].uri_prefixes[2].unit`.
    pub path: String,
    /// What is wrong, and what is expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.pos {
            Some(p) => write!(f, "{}:{}:{}: {severity}: ", self.file, p.line, p.column)?,
            None => write!(f, "{}: {severity}: ", self.file)?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects diagnostics while one file (or a whole configuration) is checked, so that every
/// error is reported at once instead of one per edit-and-retry cycle.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records an error.
    pub fn error(&mut self, file: &str, pos: Option<Pos>, path: &str, message: impl Into<String>) {
        self.push(Severity::Error, file, pos, path, message.into());
    }

    /// Records a warning.
    pub fn warning(
        &mut self,
        file: &str,
        pos: Option<Pos>,
        path: &str,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, file, pos, path, message.into());
    }

    fn push(
        &mut self,
        severity: Severity,
        file: &str,
        pos: Option<Pos>,
        path: &str,
        message: String,
    ) {
        self.items.push(Diagnostic {
            severity,
            file: file.to_owned(),
            pos,
            path: path.to_owned(),
            message,
        });
    }

    /// True when at least one error was recorded.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    /// Appends everything from `other`.
    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    /// All diagnostics, in the order found.
    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }

    /// All diagnostics, in the order found.
    pub fn as_slice(&self) -> &[Diagnostic] {
        &self.items
    }
}

/// Closest candidate within a small edit distance, for "did you mean" hints.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars; inputs are short field names and unit words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let fields = ["uri_prefixes", "overall_limit", "shortname"];
        assert_eq!(did_you_mean("uri_prefix", &fields), Some("uri_prefixes"));
        assert_eq!(did_you_mean("overal_limit", &fields), Some("overall_limit"));
        assert_eq!(did_you_mean("banana", &fields), None);
    }

    #[test]
    fn display_has_file_line_column_and_path() {
        let mut d = Diagnostics::default();
        d.error("a.yaml", Some(Pos { line: 3, column: 7 }), "x.y", "bad");
        assert_eq!(d.as_slice()[0].to_string(), "a.yaml:3:7: error: x.y: bad");
        assert!(d.has_errors());
    }
}
