//! Sans-IO TLS ClientHello reader: extracts the SNI without terminating TLS.
//!
//! Feed the bytes read from a public connection to [`ClientHelloParser::push`] as they arrive.
//! The parser reassembles the handshake message across TLS records (a ClientHello sent in
//! many 1-byte records still parses), keeps every raw byte so the caller can replay them into
//! the tunnel unchanged ([`ClientHelloParser::buffered`]), and caps the raw bytes it will hold.
//! No I/O, no async runtime.

/// Default cap on the raw bytes buffered while looking for the ClientHello.
pub const DEFAULT_MAX_CLIENT_HELLO: usize = 16 * 1024;

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const MAX_RECORD: usize = 16 * 1024;

/// Outcome of feeding bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// Complete ClientHello with a `host_name` server name (lower-cased, no trailing dot).
    Sni(String),
    /// Complete ClientHello without a server_name extension.
    NoSni,
}

/// Why the bytes are not a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    #[error("not a TLS handshake (first byte 0x{0:02x})")]
    NotTls(u8),
    #[error("the first handshake message is not a ClientHello (type {0})")]
    NotClientHello(u8),
    #[error("the connection ended before the ClientHello was complete ({0} bytes read)")]
    Truncated(usize),
    #[error("the ClientHello exceeds the {max}-byte limit")]
    Oversized { max: usize },
    #[error("bad length in the ClientHello: {0}")]
    BadLength(&'static str),
    #[error("invalid server name in the ClientHello")]
    InvalidSni,
}

/// Incremental ClientHello reader (see the module docs).
#[derive(Debug)]
pub struct ClientHelloParser {
    max: usize,
    raw: Vec<u8>,
    /// Offset in `raw` of the next unparsed record header.
    pos: usize,
    /// Reassembled handshake-layer bytes.
    hs: Vec<u8>,
    done: Option<Result<Parsed, SniError>>,
}

impl Default for ClientHelloParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CLIENT_HELLO)
    }
}

impl ClientHelloParser {
    /// A parser that refuses to buffer more than `max_bytes` raw bytes.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max: max_bytes,
            raw: Vec::new(),
            pos: 0,
            hs: Vec::new(),
            done: None,
        }
    }

    /// Every raw byte fed so far (to be replayed to the backend unchanged).
    pub fn buffered(&self) -> &[u8] {
        &self.raw
    }

    /// Takes the raw bytes.
    pub fn into_buffered(self) -> Vec<u8> {
        self.raw
    }

    /// Signals end of input: a parser still waiting for bytes reports `Truncated`.
    pub fn finish(&self) -> Result<Parsed, SniError> {
        match &self.done {
            Some(r) => r.clone(),
            None => Err(SniError::Truncated(self.raw.len())),
        }
    }

    /// Feeds more bytes. Once a final result (anything but `NeedMore`) was returned, further
    /// calls return it again and keep buffering nothing.
    pub fn push(&mut self, data: &[u8]) -> Result<Parsed, SniError> {
        if let Some(r) = &self.done {
            return r.clone();
        }
        if self.raw.len() + data.len() > self.max {
            let r = Err(SniError::Oversized { max: self.max });
            self.done = Some(r.clone());
            return r;
        }
        self.raw.extend_from_slice(data);
        let r = self.advance();
        if !matches!(r, Ok(Parsed::NeedMore)) {
            self.done = Some(r.clone());
        }
        r
    }

    fn advance(&mut self) -> Result<Parsed, SniError> {
        if let Some(&b) = self.raw.first()
            && b != CONTENT_HANDSHAKE
        {
            return Err(SniError::NotTls(b));
        }
        loop {
            let rest = &self.raw[self.pos..];
            if rest.len() < 5 {
                return Ok(Parsed::NeedMore);
            }
            if rest[0] != CONTENT_HANDSHAKE {
                // Another record type in the middle of the ClientHello.
                return Err(SniError::NotTls(rest[0]));
            }
            if rest[1] != 3 {
                return Err(SniError::NotTls(rest[0]));
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len == 0 {
                return Err(SniError::BadLength("empty handshake record"));
            }
            if len > MAX_RECORD {
                return Err(SniError::BadLength("record longer than 16 KiB"));
            }
            if rest.len() < 5 + len {
                return Ok(Parsed::NeedMore);
            }
            self.hs.extend_from_slice(&rest[5..5 + len]);
            self.pos += 5 + len;
            if !self.hs.is_empty() && self.hs[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(SniError::NotClientHello(self.hs[0]));
            }
            if self.hs.len() >= 4 {
                let mlen = (usize::from(self.hs[1]) << 16)
                    | (usize::from(self.hs[2]) << 8)
                    | usize::from(self.hs[3]);
                if mlen > self.max {
                    return Err(SniError::Oversized { max: self.max });
                }
                if self.hs.len() >= 4 + mlen {
                    return parse_client_hello(&self.hs[4..4 + mlen]);
                }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::BadLength(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

fn parse_client_hello(body: &[u8]) -> Result<Parsed, SniError> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    let sid = r.vec8("session_id")?;
    if sid.len() > 32 {
        return Err(SniError::BadLength("session_id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::BadLength("cipher_suites"));
    }
    let comp = r.vec8("compression_methods")?;
    if comp.is_empty() {
        return Err(SniError::BadLength("compression_methods"));
    }
    if r.0.is_empty() {
        return Ok(Parsed::NoSni);
    }
    let exts = r.vec16("extensions")?;
    if !r.0.is_empty() {
        return Err(SniError::BadLength("bytes after the extensions"));
    }
    let mut e = Reader(exts);
    let mut sni = None;
    while !e.0.is_empty() {
        let ty = e.u16("extension type")?;
        let data = e.vec16("extension data")?;
        if ty == EXT_SERVER_NAME {
            if sni.is_some() {
                return Err(SniError::BadLength("duplicate server_name extension"));
            }
            sni = Some(parse_server_name(data)?);
        }
    }
    Ok(match sni {
        Some(Some(name)) => Parsed::Sni(name),
        _ => Parsed::NoSni,
    })
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, SniError> {
    let mut r = Reader(data);
    let list = r.vec16("server_name_list")?;
    if !r.0.is_empty() || list.is_empty() {
        return Err(SniError::BadLength("server_name_list"));
    }
    let mut l = Reader(list);
    let mut host = None;
    while !l.0.is_empty() {
        let kind = l.u8("name_type")?;
        let name = l.vec16("server name")?;
        if kind == 0 && host.is_none() {
            host = Some(validate_host(name)?);
        }
    }
    Ok(host)
}

fn validate_host(name: &[u8]) -> Result<String, SniError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(SniError::InvalidSni);
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty()
            || label.len() > 63
            || label.first() == Some(&b'-')
            || label.last() == Some(&b'-')
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            return Err(SniError::InvalidSni);
        }
    }
    // All ASCII per the checks above.
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Builds a ClientHello handshake message (without record framing).
    fn hello(sni: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0xab; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        // An unrelated extension first (supported_versions).
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name);
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in msg.chunks(chunk) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn sni_in_one_record() {
        let raw = records(&hello(Some(b"X.Tunnel.Example.")), 16 * 1024);
        let mut p = ClientHelloParser::default();
        assert_eq!(
            p.push(&raw).unwrap(),
            Parsed::Sni("x.tunnel.example".into())
        );
        assert_eq!(p.buffered(), &raw[..]);
    }

    #[test]
    fn byte_by_byte_in_one_byte_records() {
        let raw = records(&hello(Some(b"a.b.example")), 1);
        let mut p = ClientHelloParser::default();
        let mut result = None;
        for (i, b) in raw.iter().enumerate() {
            match p.push(std::slice::from_ref(b)).unwrap() {
                Parsed::NeedMore => assert!(i + 1 < raw.len()),
                other => {
                    assert_eq!(i + 1, raw.len(), "result before the last byte");
                    result = Some(other);
                }
            }
        }
        assert_eq!(result, Some(Parsed::Sni("a.b.example".into())));
        assert_eq!(p.into_buffered(), raw);
    }

    #[test]
    fn no_sni() {
        let raw = records(&hello(None), 100);
        assert_eq!(
            ClientHelloParser::default().push(&raw).unwrap(),
            Parsed::NoSni
        );
    }

    #[test]
    fn not_tls() {
        let mut p = ClientHelloParser::default();
        assert_eq!(p.push(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls(b'G')));
        // Sticky.
        assert_eq!(p.push(b"x"), Err(SniError::NotTls(b'G')));
    }

    #[test]
    fn not_client_hello() {
        let mut msg = hello(Some(b"a.example"));
        msg[0] = 2; // ServerHello
        let raw = records(&msg, 500);
        assert_eq!(
            ClientHelloParser::default().push(&raw),
            Err(SniError::NotClientHello(2))
        );
    }

    #[test]
    fn truncated() {
        let raw = records(&hello(Some(b"a.example")), 500);
        let mut p = ClientHelloParser::default();
        assert_eq!(p.push(&raw[..raw.len() - 3]).unwrap(), Parsed::NeedMore);
        assert_eq!(p.finish(), Err(SniError::Truncated(raw.len() - 3)));
    }

    #[test]
    fn oversized_raw_and_declared() {
        let raw = records(&hello(Some(b"a.example")), 1);
        let mut p = ClientHelloParser::new(raw.len() - 1);
        assert_eq!(
            p.push(&raw),
            Err(SniError::Oversized { max: raw.len() - 1 })
        );
        // A handshake header that declares a 1 MiB message is refused at once.
        let raw = [0x16, 3, 1, 0, 4, 1, 0x10, 0, 0];
        assert_eq!(
            ClientHelloParser::default().push(&raw),
            Err(SniError::Oversized {
                max: DEFAULT_MAX_CLIENT_HELLO
            })
        );
    }

    #[test]
    fn bad_lengths() {
        // Empty record.
        assert!(matches!(
            ClientHelloParser::default().push(&[0x16, 3, 1, 0, 0]),
            Err(SniError::BadLength(_))
        ));
        // Extensions length larger than what is there.
        let mut msg = hello(Some(b"a.example"));
        let ext_len_at = 4 + 2 + 32 + 1 + 4 + 2;
        msg[ext_len_at] = 0xff;
        assert!(matches!(
            ClientHelloParser::default().push(&records(&msg, 1000)),
            Err(SniError::BadLength(_))
        ));
        // Server name longer than its extension.
        let mut msg = hello(Some(b"a.example"));
        let n = msg.len();
        msg[n - 10] = 0x7f;
        assert!(matches!(
            ClientHelloParser::default().push(&records(&msg, 1000)),
            Err(SniError::BadLength(_))
        ));
    }

    #[test]
    fn invalid_names() {
        for bad in [&b"a..b"[..], b"-a.b", b"a b.c", b"\xff.example", b""] {
            let raw = records(&hello(Some(bad)), 1000);
            assert_eq!(
                ClientHelloParser::default().push(&raw),
                Err(SniError::InvalidSni),
                "{bad:?}"
            );
        }
    }

    /// The first flight of a real rustls client, fed whole and in random-sized pieces.
    #[test]
    fn real_rustls_client_hello() {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("Api.abc123.Relay.Example").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut raw = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut raw).unwrap();
        }
        assert!(raw.len() > 100);
        assert_eq!(
            ClientHelloParser::default().push(&raw).unwrap(),
            Parsed::Sni("api.abc123.relay.example".into())
        );
        let mut p = ClientHelloParser::default();
        let mut out = Parsed::NeedMore;
        for chunk in raw.chunks(7) {
            out = p.push(chunk).unwrap();
        }
        assert_eq!(out, Parsed::Sni("api.abc123.relay.example".into()));
        // An IP-address server name sends no SNI.
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut raw = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut raw).unwrap();
        }
        assert_eq!(
            ClientHelloParser::default().push(&raw).unwrap(),
            Parsed::NoSni
        );
    }
}
