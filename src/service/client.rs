//! A minimal blocking HTTP/1.1 client for loopback: the service's tests, its load generator and
//! the browser test's WebDriver calls. One keep-alive connection per [`Client`], reopened when
//! the server closes it; bodies framed by `Content-Length` or chunked encoding. No TLS, no
//! redirects, no proxies: it talks to a process on this machine, nothing else.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status, headers (names lower-cased) and the whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code
    pub status: u16,
    /// headers in order, names lower-cased
    pub headers: Vec<(String, String)>,
    /// body bytes (de-chunked)
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; `Value::Null` with the text in a string when it is not JSON, so that
    /// a test's assertion shows what came back.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| serde_json::Value::String(format!("<not JSON> {}", self.text())))
    }
}

/// A blocking client bound to one server address.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client for `addr` with a 60 s read/write timeout.
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            timeout: Duration::from_secs(60),
            conn: None,
        }
    }

    /// Sets the read/write timeout of later connections.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn connect(&self) -> io::Result<BufReader<TcpStream>> {
        let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        Ok(BufReader::with_capacity(1 << 16, s))
    }

    /// Sends one request and reads its response. `headers` are sent as given (add
    /// `Content-Type` yourself); `Host` and `Content-Length` are added. A request on a reused
    /// connection that the server had closed is retried once on a new connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let reused = self.conn.is_some();
        match self.send(head.as_bytes(), body) {
            Ok(r) => Ok(r),
            Err(e) if reused && is_stale(&e) => {
                self.conn = None;
                self.send(head.as_bytes(), body)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    /// `GET path` with optional bearer key.
    pub fn get(&mut self, path: &str, key: Option<&str>) -> io::Result<Response> {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        self.request("GET", path, &headers, b"")
    }

    /// `POST path` of a body with a content type and optional bearer key.
    pub fn post(
        &mut self,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<Response> {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("Content-Type", content_type)];
        if let Some(a) = auth.as_deref() {
            headers.push(("Authorization", a));
        }
        self.request("POST", path, &headers, body)
    }

    fn send(&mut self, head: &[u8], body: &[u8]) -> io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        {
            let s = conn.get_mut();
            s.write_all(head)?;
            s.write_all(body)?;
            s.flush()?;
        }
        let (resp, keep) = read_response(conn)?;
        if !keep {
            self.conn = None;
        }
        Ok(resp)
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response; returns it and whether the connection may be reused.
fn read_response(r: &mut impl BufRead) -> io::Result<(Response, bool)> {
    let status_line = read_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1 status line: {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("no status code in {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut keep = version != "HTTP/1.0";
    if find("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
        keep = false;
    }
    let chunked =
        find("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // trailers, then the blank line
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        r.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let (a, keep) = read_response(&mut r).unwrap();
        assert_eq!((a.status, a.text().as_str(), keep), (200, "hello", true));
        assert_eq!(a.header("x-a"), Some("b"));
        let (b, _) = read_response(&mut r).unwrap();
        assert_eq!((b.status, b.text().as_str()), (404, "abcde"));
        assert!(read_response(&mut r).is_err(), "no third response");
    }

    #[test]
    fn rejects_garbage_and_honours_connection_close() {
        let mut r = BufReader::new(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]);
        assert!(read_response(&mut r).is_err());
        let mut r = BufReader::new(
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let (_, keep) = read_response(&mut r).unwrap();
        assert!(!keep);
    }
}
