//! A small, bounded parser for the agent's event stream (`GET /v1/events`,
//! server-sent events): bytes in, the `data` of complete events out.

/// Longest line the parser keeps; an event stream that sends a longer one
/// is broken (the agent's events are small JSON objects).
pub const MAX_LINE: usize = 256 * 1024;

/// Why the stream cannot be parsed any further.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A line grew past [`MAX_LINE`] bytes without an end.
    #[error("an event stream line is longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    after_cr: bool,
}

impl SseParser {
    /// Feeds a chunk; returns the `data` of every event it completes.
    /// Comments (`:` lines, the keep-alives) and other fields are skipped.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<String>, SseError> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue; // the LF of a CRLF
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(data) = self.line_done(&line) {
                        events.push(data);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        if line.first() == Some(&b':') {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            let data = self.data.get_or_insert_with(String::new);
            if !data.is_empty() {
                data.push('\n');
            }
            if data.len() + value.len() <= MAX_LINE {
                data.push_str(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"data: {\"type\":").unwrap().is_empty());
        assert!(p.feed(b"\"hello\"}\n").unwrap().is_empty());
        assert_eq!(p.feed(b"\n").unwrap(), [r#"{"type":"hello"}"#]);
        let got = p
            .feed(b": keep-alive\n\ndata:{\"a\":1}\r\n\r\ndata: x\rdata: y\r\r")
            .unwrap();
        assert_eq!(got, [r#"{"a":1}"#, "x\ny"]);
    }

    #[test]
    fn other_fields_and_comments_are_ignored() {
        let mut p = SseParser::default();
        let got = p
            .feed(b"event: ping\nid: 7\nretry: 100\n\n: c\n\ndata\n\n")
            .unwrap();
        assert_eq!(got, [""], "a bare `data` line is an empty event");
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut p = SseParser::default();
        let chunk = vec![b'x'; MAX_LINE];
        assert!(p.feed(&chunk).unwrap().is_empty());
        assert_eq!(p.feed(b"y"), Err(SseError::LineTooLong));
    }
}
