//! Security of the real server process: HTTPS with `--tls-cert/--tls-key` (the CLI trusting
//! a self-signed certificate through `GOVCFS_CA_CERT`), tokens scoped per repository and
//! read-only or read-write from `--auth-token-file`, tokens kept out of logs, and per-client
//! limits answering 429 with `Retry-After`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{http_request, run_cli, run_cli_with, ServerProcess};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with openssl:
/// (CA certificate, server certificate, server key).
fn certificates(dir: &Path) -> (String, String, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=govcfs test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

#[test]
fn https_serves_the_cli_when_it_trusts_the_ca_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let server = ServerProcess::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(
        server.url().starts_with("https://"),
        "the listening line names https: {}",
        server.url()
    );
    let source = dir.path().join("secret.txt");
    std::fs::write(&source, b"over TLS\n".repeat(10_000)).unwrap();
    let url = format!("{}/secret.txt", server.repo_url("default"));
    let trust = [("GOVCFS_CA_CERT", ca.as_str())];
    let put = run_cli_with(
        &["put", source.to_str().unwrap(), &url],
        &trust,
        common::CLI_TIMEOUT,
    );
    put.assert_success("govcfs put over https");
    let got = run_cli_with(&["get", &url], &trust, common::CLI_TIMEOUT);
    got.assert_success("govcfs get over https");
    assert!(got.stdout == std::fs::read(&source).unwrap());
    let stream = run_cli_with(&["get", &url, "--stream"], &trust, common::CLI_TIMEOUT);
    stream.assert_success("govcfs get --stream over https");
    assert!(stream.stdout == got.stdout);
    // Without trusting the certificate the CLI refuses the server.
    let untrusted = run_cli(&["get", &url]);
    assert!(
        !untrusted.status.success(),
        "an untrusted certificate was accepted"
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = http_request(server.addr, "GET", "/healthz", &[], b"");
    assert!(
        plain.map(|r| r.status != 200).unwrap_or(true),
        "plain HTTP was served on the TLS port"
    );
}

#[test]
fn scoped_tokens_reach_only_their_repository_and_read_only_ones_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# test grants\nadmin-secret * rw\nphotos-writer photos rw\nphotos-reader photos ro\n",
    )
    .unwrap();
    let server = ServerProcess::start_with(&[
        "--auth-token-file",
        tokens.to_str().unwrap(),
        "--auth-token",
        "cli-secret",
    ]);
    let as_token = |t: &str| [("GOVCFS_TOKEN", t.to_string())];
    let cli = |token: &str, args: &[&str]| {
        let env = as_token(token);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli_with(args, &env, common::CLI_TIMEOUT)
    };
    let photos = server.repo_url("photos");
    cli("admin-secret", &["repo", "create", &photos])
        .assert_success("create photos with the admin token");
    let other = server.repo_url("other");
    cli("cli-secret", &["repo", "create", &other]).assert_success("create other with --auth-token");
    assert!(
        !cli(
            "photos-writer",
            &["repo", "create", &server.repo_url("third")]
        )
        .status
        .success(),
        "a repo-bound token created a repository"
    );

    let file = dir.path().join("a.txt");
    std::fs::write(&file, b"hello").unwrap();
    let f = file.to_str().unwrap();
    cli("photos-writer", &["put", f, &format!("{photos}/a.txt")])
        .assert_success("the photos writer writes photos");
    let denied = cli("photos-writer", &["put", f, &format!("{other}/a.txt")]);
    assert!(
        !denied.status.success(),
        "the photos writer wrote to another repository"
    );
    assert!(
        denied.stderr.contains("403") || denied.stderr.to_lowercase().contains("may not"),
        "{}",
        denied.stderr
    );
    let read = cli("photos-reader", &["get", &format!("{photos}/a.txt")]);
    read.assert_success("the photos reader reads photos");
    assert_eq!(read.stdout, b"hello");
    let ro = cli("photos-reader", &["put", f, &format!("{photos}/b.txt")]);
    assert!(!ro.status.success(), "a read-only token wrote");
    assert!(
        ro.stderr.contains("read-only") || ro.stderr.contains("403"),
        "{}",
        ro.stderr
    );
    assert!(
        !cli("photos-reader", &["get", &format!("{other}/a.txt")])
            .status
            .success(),
        "the photos reader read another repository"
    );

    // Every write route refuses the read-only token with 403; reads and session routes work.
    let auth = [("Authorization", "Bearer photos-reader")];
    for (method, target, body) in [
        (
            "POST",
            "/api/v1/repos/photos/commits",
            &br#"{"message":"x","changes":[{"op":"mkdir","path":"d"}]}"#[..],
        ),
        ("POST", "/api/v1/repos/photos/uploads", b"{}"),
        (
            "PUT",
            "/api/v1/repos/photos/uploads/00000000-0000-0000-0000-000000000000/0",
            b"x",
        ),
        (
            "POST",
            "/api/v1/repos/photos/uploads/00000000-0000-0000-0000-000000000000/complete",
            b"",
        ),
        (
            "DELETE",
            "/api/v1/repos/photos/uploads/00000000-0000-0000-0000-000000000000",
            b"",
        ),
        ("POST", "/api/v1/repos/photos/stream/blob/upload", b"data"),
        ("POST", "/api/v1/repos", br#"{"id":"x"}"#),
    ] {
        let r = http_request(server.addr, method, target, &auth, body).expect("request");
        assert_eq!(
            r.status,
            403,
            "{method} {target} with a read-only token: {}",
            r.text()
        );
    }
    for target in [
        "/api/v1/repos/photos/tree/",
        "/api/v1/repos/photos/stat/a.txt",
        "/photos/a.txt",
        "/api/v1/repos",
        "/metrics",
    ] {
        let r = http_request(server.addr, "GET", target, &auth, b"").expect("request");
        assert_eq!(
            r.status,
            200,
            "GET {target} with a read-only token: {}",
            r.text()
        );
    }
    let wrong = http_request(
        server.addr,
        "GET",
        "/photos/a.txt",
        &[("Authorization", "Bearer nope")],
        b"",
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let encoded = http_request(
        server.addr,
        "GET",
        "/api/v1/repos/%6Fther/tree/",
        &auth,
        b"",
    )
    .unwrap();
    assert_eq!(
        encoded.status, 403,
        "a percent-encoded repository name slipped past the scope"
    );
    for secret in [
        "admin-secret",
        "photos-writer",
        "photos-reader",
        "cli-secret",
    ] {
        assert!(
            !server.log().contains(secret),
            "the server log shows a token"
        );
    }
}

#[test]
fn a_client_over_its_request_or_session_share_gets_429_with_retry_after() {
    let server =
        ServerProcess::start_with(&["--max-client-streams", "2", "--max-client-requests", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, vec![7u8; 100_000]).unwrap();
    run_cli(&[
        "put",
        file.to_str().unwrap(),
        &format!("{}/f", server.repo_url("default")),
    ])
    .assert_success("put");
    let stat = http_request(server.addr, "GET", "/api/v1/repos/default/stat/f", &[], b"").unwrap();
    let hash = serde_json::from_slice::<serde_json::Value>(&stat.body).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let start = |n: usize| {
        (0..n)
            .map(|_| {
                http_request(
                    server.addr,
                    "POST",
                    "/api/v1/repos/default/stream/blob/start",
                    &[],
                    format!(r#"{{"hash":"{hash}"}}"#).as_bytes(),
                )
                .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let answers = start(3);
    assert_eq!(answers[0].status, 201);
    assert_eq!(answers[1].status, 201);
    assert_eq!(
        answers[2].status,
        429,
        "a third session of one client: {}",
        answers[2].text()
    );
    assert_eq!(answers[2].header("retry-after"), Some("1"));

    // Requests in progress: 3 slow uploads hold the client's share; a 4th request is refused.
    // The server may take a poll before a held upload (connections are served concurrently);
    // the upload is then the one refused, and is replaced until all three are in progress.
    let hold = || {
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(server.addr).unwrap();
        write!(socket, "POST /api/v1/repos/default/stream/blob/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial").unwrap();
        socket
    };
    let answered = |socket: &std::net::TcpStream| {
        socket.set_nonblocking(true).unwrap();
        let got = socket.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
        socket.set_nonblocking(false).unwrap();
        got
    };
    let mut held: Vec<std::net::TcpStream> = (0..3).map(|_| hold()).collect();
    let refused = common::wait_until(std::time::Duration::from_secs(10), || {
        for socket in held.iter_mut() {
            if answered(socket) {
                *socket = hold();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        http_request(server.addr, "GET", "/api/v1/repos", &[], b"").is_ok_and(|r| r.status == 429)
    });
    assert!(
        refused,
        "a 4th request while 3 are in progress was not refused"
    );
    drop(held);
    let freed = common::wait_until(std::time::Duration::from_secs(10), || {
        http_request(server.addr, "GET", "/api/v1/repos", &[], b"").is_ok_and(|r| r.status == 200)
    });
    assert!(
        freed,
        "the client's share was not given back after its requests ended"
    );
}
