//! HTTP over loopback: a runtime and a reqwest client for async tests, raw HTTP/1.1 requests
//! whose target reaches the server untouched, and the check of the server's JSON errors.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// A single-threaded tokio runtime with I/O and timers, for `runtime().block_on(…)`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs a future to completion on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// An async HTTP client for loopback tests: no proxy, the default redirect policy (up to 10
/// followed), a 5 s connect timeout and a 120 s limit per request (long enough for a 1 GiB
/// body; an event stream read through it ends after 120 s too).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("reqwest client")
}

/// A loopback port on which nothing listens (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// An HTTP response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Sends one HTTP/1.1 request over a fresh loopback connection, exactly as given: the
/// target is not normalised (so `..`, `%2e%2e` and `//` reach the server untouched).
/// `Connection: close` is added; the response is read to the end (10 s time limit).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// Parses a complete HTTP/1.1 response (`Content-Length`, chunked or read-to-close body).
pub fn parse_response(raw: &[u8], head_only: bool) -> std::io::Result<RawResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match len {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(_) => return Err(bad("body shorter than Content-Length")),
            None => rest.to_vec(),
        }
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Status and JSON body of a reqwest response: `Value::Null` when the body is empty or not
/// JSON, and a string saying so when it is sent with another `Content-Type` than
/// `application/json` (so a check of any field fails, naming the type).
pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let text = response.text().await.expect("read body");
    let Ok(body) = serde_json::from_str::<Value>(&text) else {
        return (status, Value::Null);
    };
    match content_type {
        Some(t) if is_json_type(&t) => (status, body),
        other => (
            status,
            Value::String(format!("JSON sent as Content-Type {other:?}: {body}")),
        ),
    }
}

/// Whether a `Content-Type` value is JSON (`application/json`, parameters allowed).
pub fn is_json_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Asserts a JSON error answer read by [`json_of`]: this status, a JSON object typed
/// `application/json`, this `code`, and a non-empty `error` message.
pub fn assert_error(what: &str, status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{what}: status (body {body})");
    assert_error_body(what, body);
    assert_eq!(body["code"], want_code, "{what}: code (body {body})");
}

/// Asserts a JSON error answer with one of `statuses` and some `code`.
pub fn assert_error_in(what: &str, status: u16, body: &Value, statuses: &[u16]) {
    assert!(
        statuses.contains(&status),
        "{what}: status {status} not in {statuses:?} (body {body})"
    );
    assert_error_body(what, body);
    assert!(
        body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: no code in {body}"
    );
}

/// The parts every error body has: a typed JSON object with a non-empty `error`.
fn assert_error_body(what: &str, body: &Value) {
    assert!(body.is_object(), "{what}: not a JSON error object: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no error message in {body}"
    );
}

/// `GET /api/v1/repos/default/stat/PATH` over a raw request: the entry, or `None` on 404.
pub fn stat_entry(addr: SocketAddr, path: &str) -> Option<Value> {
    let response = http_request(
        addr,
        "GET",
        &format!("/api/v1/repos/default/stat/{path}"),
        &[],
        b"",
    )
    .unwrap_or_else(|e| panic!("GET stat/{path}: {e}"));
    match response.status {
        200 => Some(response.json()),
        404 => None,
        s => panic!("GET stat/{path}: status {s}: {}", response.text()),
    }
}

/// The blob id the server has at `path` of repo `default` (`None` if the path does not exist).
pub fn server_hash(addr: SocketAddr, path: &str) -> Option<String> {
    stat_entry(addr, path).map(|e| e["hash"].as_str().expect("hash").to_string())
}

/// The answer of a request not sent yet, as [`json_of`] reads it.
pub type PendingAnswer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u16, Value)> + 'a>>;

/// A request expected to fail: what it is (named when it fails), the request, and the
/// status and `code` its JSON error must have.
pub struct ErrorCase<'a> {
    pub what: String,
    pub answer: PendingAnswer<'a>,
    pub status: u16,
    pub code: &'a str,
}

/// An [`ErrorCase`]; `answer` is only sent when [`assert_error_cases`] reaches it.
pub fn error_case<'a>(
    what: impl Into<String>,
    answer: impl std::future::Future<Output = (u16, Value)> + 'a,
    status: u16,
    code: &'a str,
) -> ErrorCase<'a> {
    ErrorCase {
        what: what.into(),
        answer: Box::pin(answer),
        status,
        code,
    }
}

/// Sends each case's request in order and checks its answer with [`assert_error`].
pub async fn assert_error_cases(cases: Vec<ErrorCase<'_>>) {
    for case in cases {
        let (status, body) = case.answer.await;
        assert_error(&case.what, status, &body, case.status, case.code);
    }
}
