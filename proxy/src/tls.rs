//! Reading the server name out of a TLS ClientHello, without decrypting
//! anything: the first flight of a CONNECT tunnel must be a ClientHello
//! whose SNI is the CONNECT host.
//!
//! Owns: a bounded parser over the TLS records of a first flight (RFC 8446
//! §5.1 records, §4.1.2 ClientHello; RFC 6066 §3 server_name). Must never:
//! read past a length it has not checked, accept an ambiguity (two SNI
//! extensions, two host names), or panic on any input.
//!
//! Why hand-written: rustls has no public ClientHello parser (its
//! `Acceptor` reads the hello but only inside a server handshake, which the
//! proxy must not run), and `tls-parser` brings nom, phf and num_enum for
//! the two fields needed here. The grammar read is small and fixed; every
//! read goes through [`Reader`], which checks bounds.

/// Most bytes of handshake data accepted for one ClientHello (a hello with a
/// post-quantum key share is about 1.8 KiB; 16 KiB is one full record).
pub(crate) const MAX_HELLO: usize = 16 * 1024;

/// Content type of a handshake record.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// `encrypted_client_hello` (RFC 9849 / draft-ietf-tls-esni-18+).
const EXT_ECH: u16 = 0xfe0d;
/// The pre-standard `encrypted_server_name` (ESNI drafts).
const EXT_ESNI: u16 = 0xffce;

/// What a complete ClientHello says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The `host_name` of the `server_name` extension, if any (as sent).
    pub(crate) sni: Option<String>,
    /// Whether it carries Encrypted Client Hello (or ESNI).
    pub(crate) ech: bool,
}

/// Why a first flight is not an acceptable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    /// Not a TLS handshake record, not a ClientHello, or malformed.
    #[error("not a well-formed TLS ClientHello: {0}")]
    NotTls(&'static str),
}

/// A bounds-checked cursor.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { rest: b }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.rest.len() < n {
            return Err(HelloError::NotTls("truncated field"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or_default(),
            b.get(1).copied().unwrap_or_default(),
        ]))
    }

    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Parse the start of a first flight. `Ok(None)`: more bytes are needed
/// (the caller bounds how many and for how long). `Ok(Some)`: a complete
/// ClientHello, however many records it spans.
pub(crate) fn parse_first_flight(buf: &[u8]) -> Result<Option<Hello>, HelloError> {
    // Reassemble the handshake message from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut records = Reader::new(buf);
    loop {
        if records.rest.len() < 5 {
            // Judge the bytes there are: a first byte that is not a
            // handshake record (e.g. `GET `, an SSLv2 hello) fails at once.
            if let Some(&t) = records.rest.first() {
                if t != HANDSHAKE {
                    return Err(HelloError::NotTls("not a handshake record"));
                }
            }
            return Ok(None);
        }
        let ctype = records.u8()?;
        let major = records.u8()?;
        let _minor = records.u8()?;
        let len = usize::from(records.u16()?);
        if ctype != HANDSHAKE || major != 3 {
            return Err(HelloError::NotTls("not a TLS handshake record"));
        }
        if len == 0 || len > MAX_HELLO {
            return Err(HelloError::NotTls("bad record length"));
        }
        if records.rest.len() < len {
            return Ok(None);
        }
        hs.extend_from_slice(records.take(len)?);
        if hs.len() < 4 {
            continue;
        }
        let mut h = Reader::new(&hs);
        if h.u8()? != CLIENT_HELLO {
            return Err(HelloError::NotTls(
                "first handshake message is not a ClientHello",
            ));
        }
        let l = h.take(3)?;
        let body_len = usize::from(l.first().copied().unwrap_or_default()) << 16
            | usize::from(l.get(1).copied().unwrap_or_default()) << 8
            | usize::from(l.get(2).copied().unwrap_or_default());
        if body_len > MAX_HELLO {
            return Err(HelloError::NotTls("ClientHello too large"));
        }
        if h.rest.len() < body_len {
            continue;
        }
        // Bytes after the hello in the same record would be a second
        // handshake message, which no client sends before a ServerHello.
        if h.rest.len() != body_len {
            return Err(HelloError::NotTls("data after the ClientHello"));
        }
        return client_hello(h.rest).map(Some);
    }
}

/// The ClientHello body (RFC 8446 §4.1.2; TLS 1.0-1.2 share the layout).
fn client_hello(body: &[u8]) -> Result<Hello, HelloError> {
    let mut r = Reader::new(body);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Err(HelloError::NotTls("session id longer than 32 bytes"));
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::NotTls("bad cipher suite list"));
    }
    if r.vec8()?.is_empty() {
        return Err(HelloError::NotTls("no compression methods"));
    }
    let mut hello = Hello {
        sni: None,
        ech: false,
    };
    if r.is_empty() {
        // No extensions at all (legal before TLS 1.3): no SNI.
        return Ok(hello);
    }
    let mut exts = Reader::new(r.vec16()?);
    if !r.is_empty() {
        return Err(HelloError::NotTls("data after the extensions"));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if seen.contains(&kind) {
            return Err(HelloError::NotTls("an extension appears twice"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => hello.sni = Some(server_name(data)?),
            EXT_ECH | EXT_ESNI => hello.ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// The one `host_name` of a `server_name` extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<String, HelloError> {
    let mut r = Reader::new(data);
    let mut list = Reader::new(r.vec16()?);
    if !r.is_empty() {
        return Err(HelloError::NotTls("data after the server name list"));
    }
    let mut name: Option<String> = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let value = list.vec16()?;
        if kind != 0 {
            continue;
        }
        if name.is_some() {
            return Err(HelloError::NotTls("two host names in SNI"));
        }
        if value.is_empty() || !value.iter().all(|b| b.is_ascii_graphic()) {
            return Err(HelloError::NotTls("SNI host name is not printable ASCII"));
        }
        name = Some(String::from_utf8_lossy(value).into_owned());
    }
    name.ok_or(HelloError::NotTls("SNI without a host name"))
}

/// Whether an SNI host name names `host` (ASCII case-insensitive, one
/// trailing dot allowed).
pub(crate) fn sni_matches(sni: &str, host: &str) -> bool {
    let sni = sni.strip_suffix('.').unwrap_or(sni);
    sni.eq_ignore_ascii_case(host)
}

/// A fatal TLS alert record (TLS 1.2 framing, understood by every version
/// before a handshake completes): `unrecognized_name` (112) or
/// `handshake_failure` (40).
pub(crate) fn alert(description: u8) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with these extensions, in one record.
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut e = Vec::new();
        for (kind, data) in exts {
            e.extend_from_slice(&kind.to_be_bytes());
            e.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&u16::try_from(e.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![CLIENT_HELLO, 0];
        hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut data = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        (EXT_SERVER_NAME, data)
    }

    #[test]
    fn reads_the_sni() {
        let h = parse_first_flight(&hello(&[(10, vec![0, 2, 0, 29]), sni("pypi.org")]))
            .unwrap()
            .unwrap();
        assert_eq!(h.sni.as_deref(), Some("pypi.org"));
        assert!(!h.ech);
        assert!(sni_matches("PyPI.org.", "pypi.org"));
        assert!(!sni_matches("evil.org", "pypi.org"));
    }

    #[test]
    fn every_prefix_asks_for_more_and_split_records_reassemble() {
        let full = hello(&[sni("pypi.org")]);
        for n in 0..full.len() {
            assert_eq!(parse_first_flight(&full[..n]), Ok(None), "prefix {n}");
        }
        // The same handshake message over two records.
        let hs = &full[5..];
        let (a, b) = hs.split_at(10);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[HANDSHAKE, 3, 1]);
            two.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
            two.extend_from_slice(part);
        }
        let h = parse_first_flight(&two).unwrap().unwrap();
        assert_eq!(h.sni.as_deref(), Some("pypi.org"));
    }

    #[test]
    fn no_sni_ech_and_ambiguity() {
        let h = parse_first_flight(&hello(&[])).unwrap().unwrap();
        assert_eq!(h.sni, None);
        let h = parse_first_flight(&hello(&[sni("pypi.org"), (EXT_ECH, vec![0; 8])]))
            .unwrap()
            .unwrap();
        assert!(h.ech);
        assert!(parse_first_flight(&hello(&[sni("a.org"), sni("b.org")])).is_err());
    }

    #[test]
    fn not_tls_fails_early_and_garbage_never_panics() {
        assert!(parse_first_flight(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_first_flight(b"G").is_err());
        assert!(parse_first_flight(&[0x80, 0x2e, 1, 3, 1]).is_err()); // SSLv2 hello
        let good = hello(&[sni("pypi.org")]);
        // Flip each byte: never a panic, and never a different name read
        // as valid without the structure holding.
        for i in 0..good.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse_first_flight(&b);
            }
        }
        let mut long = vec![HANDSHAKE, 3, 1, 0xff, 0xff];
        long.resize(70_000, 0);
        assert!(parse_first_flight(&long).is_err());
    }
}
