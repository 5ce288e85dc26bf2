//! Configuration errors: each one names the file, the line and column, and what to fix.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not at one place (the file cannot be read).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem found in one file; validation collects them all instead of stopping at the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets into `line:column` for one file's text. The line index is made at the
/// first error: a valid file of a million users never pays for it.
pub struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a Path, text: &'a str) -> Self {
        Locator {
            file,
            text,
            line_starts: std::sync::OnceLock::new(),
        }
    }

    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// An error at the start of `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let line_starts = self.line_starts.get_or_init(|| {
            let mut starts = vec![0];
            starts.extend(self.text.match_indices('\n').map(|(i, _)| i + 1));
            starts
        });
        let offset = span.start.min(self.text.len());
        let line = line_starts.partition_point(|&s| s <= offset);
        let line_start = line_starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about the file as a whole.
    pub fn whole_file(&self, message: impl Into<String>) -> ConfigError {
        whole_file(self.file, message)
    }
}

pub fn whole_file(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbé = 2\n\nc = 3";
        let loc = Locator::new(Path::new("f.toml"), text);
        assert_eq!(loc.error(0..1, "x").line, 1);
        let e = loc.error(text.find('=').unwrap()..0, "x");
        assert_eq!((e.line, e.column), (1, 3));
        let second_eq = text.match_indices('=').nth(1).unwrap().0;
        let e = loc.error(second_eq..second_eq, "x");
        assert_eq!((e.line, e.column), (2, 4));
        let c = text.find('c').unwrap();
        assert_eq!(loc.error(c..c, "x").line, 4);
        assert_eq!(
            loc.error(c..c, "bad").to_string(),
            "f.toml:4:1: bad".to_string()
        );
    }
}
