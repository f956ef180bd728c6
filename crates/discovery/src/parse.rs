//! Tolerant readers for JSON (with comments and trailing commas), TOML and YAML. Every format is
//! turned into a `serde_json::Value`; syntax errors come back with 1-based line/column.

use serde_json::Value;

/// A parse failure with a position when the parser knows one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Toml,
    Yaml,
}

pub(crate) fn parse(format: Format, text: &str) -> Result<Value, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    match format {
        Format::Json => parse_jsonc(text),
        Format::Toml => parse_toml(text),
        Format::Yaml => parse_yaml(text),
    }
}

/// JSON with `//` and `/* */` comments and trailing commas. Comments and trailing commas are
/// blanked out in place (newlines kept) so the strict parser's positions stay correct.
pub(crate) fn parse_jsonc(text: &str) -> Result<Value, ParseError> {
    let cleaned = strip_jsonc(text);
    serde_json::from_str(&cleaned).map_err(|e| ParseError {
        line: u32::try_from(e.line()).ok().filter(|l| *l > 0),
        column: u32::try_from(e.column()).ok().filter(|c| *c > 0),
        message: format!("invalid JSON: {e}"),
    })
}

fn strip_jsonc(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    let mut pending_comma: Option<usize> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                pending_comma = None;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    if bytes[i] != b'\r' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                out[i] = b' ';
                out[i + 1] = b' ';
                i += 2;
                while i < bytes.len() {
                    if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        out[i] = b' ';
                        out[i + 1] = b' ';
                        i += 2;
                        break;
                    }
                    if bytes[i] != b'\n' && bytes[i] != b'\r' {
                        out[i] = b' ';
                    }
                    i += 1;
                }
                continue;
            }
            b',' => pending_comma = Some(i),
            b'}' | b']' => {
                if let Some(p) = pending_comma.take() {
                    out[p] = b' ';
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    // Only ASCII bytes were replaced by ASCII spaces, and multi-byte sequences are either left
    // alone or blanked entirely (inside comments), so the result is valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn parse_toml(text: &str) -> Result<Value, ParseError> {
    let value: toml::Value = toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start),
            None => (None, None),
        };
        ParseError {
            line,
            column,
            message: format!("invalid TOML: {}", e.message()),
        }
    })?;
    serde_json::to_value(value).map_err(|e| ParseError {
        line: None,
        column: None,
        message: format!("unsupported TOML value: {e}"),
    })
}

fn parse_yaml(text: &str) -> Result<Value, ParseError> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| {
        let (line, column) = match e.location() {
            Some(loc) => (
                u32::try_from(loc.line()).ok(),
                u32::try_from(loc.column()).ok(),
            ),
            None => (None, None),
        };
        ParseError {
            line,
            column,
            message: format!("invalid YAML: {e}"),
        }
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (Option<u32>, Option<u32>) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (u32::try_from(line).ok(), u32::try_from(col).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_comments_and_trailing_commas() {
        let text = "{\n // c\n \"a\": [1, 2,], /* x, */\n \"s\": \"//not, a comment\",\n}\n";
        let v = parse_jsonc(text).unwrap_or_default();
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["s"], "//not, a comment");
    }

    #[test]
    fn jsonc_error_has_position() {
        let text = "{\n  \"a\": 1\n  \"b\": 2\n}";
        let e = parse_jsonc(text).err().map(|e| (e.line, e.message));
        assert_eq!(e.as_ref().and_then(|e| e.0), Some(3), "{e:?}");
    }

    #[test]
    fn escaped_quote_in_string() {
        let v = parse_jsonc(r#"{"a": "x\"//y", "b": 1,}"#).unwrap_or_default();
        assert_eq!(v["a"], "x\"//y");
        assert_eq!(v["b"], 1);
    }

    #[test]
    fn toml_and_yaml_errors_have_lines() {
        let e = parse(Format::Toml, "a = 1\nb = = 2\n").err();
        assert_eq!(e.and_then(|e| e.line), Some(2));
        let e = parse(Format::Yaml, "a: 1\nb: [1, 2\nc: 3\n").err();
        assert!(e.and_then(|e| e.line).is_some());
        assert_eq!(parse(Format::Yaml, "  \n").ok(), Some(Value::Null));
    }
}
