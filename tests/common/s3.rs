//! An S3 server for the tests: the one `scripts/test.sh` started (radosgw of a single-node
//! Ceph cluster, named by `GOVCFS_TEST_S3_ENDPOINT`), or else a `moto_server` child process
//! on an ephemeral loopback port, killed (by its PID) when dropped.
//!
//! Each [`S3Server::store_url`] is a fresh prefix in one bucket, so tests never see each
//! other's objects.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to answer after it starts.
const MOTO_STARTUP: Duration = Duration::from_secs(30);

/// A reachable S3 endpoint with a bucket the tests may write to.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    access_key: String,
    secret_key: String,
    /// What serves it, for messages: "radosgw" or "moto".
    pub kind: String,
    moto: Option<Child>,
}

impl S3Server {
    /// The S3 server of the environment, or a new moto server.
    pub fn start() -> S3Server {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        if let Ok(endpoint) = std::env::var("GOVCFS_TEST_S3_ENDPOINT") {
            return S3Server {
                endpoint,
                bucket: var("GOVCFS_TEST_S3_BUCKET", "govcfs-test"),
                access_key: var("GOVCFS_TEST_S3_ACCESS_KEY", "govcfs"),
                secret_key: var("GOVCFS_TEST_S3_SECRET_KEY", "govcfs-secret"),
                kind: var("GOVCFS_TEST_S3_KIND", "external"),
                moto: None,
            };
        }
        let port = super::free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env_remove("AWS_CA_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("no S3 server: GOVCFS_TEST_S3_ENDPOINT is unset and moto_server cannot start ({e}); run scripts/test.sh, or pip install 'moto[server]'")
            });
        let server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "govcfs-test".into(),
            access_key: "test".into(),
            secret_key: "test".into(),
            kind: "moto".into(),
            moto: Some(child),
        };
        // moto accepts unsigned requests, so the bucket is one plain PUT once it answers.
        let deadline = Instant::now() + MOTO_STARTUP;
        loop {
            if put_unsigned(&format!("{}/{}", server.endpoint, server.bucket)) {
                break;
            }
            assert!(Instant::now() < deadline, "moto_server did not answer within {MOTO_STARTUP:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// A `--store` URL of a fresh, empty prefix.
    pub fn store_url(&self) -> String {
        format!("s3://{}/{}", self.bucket, uuid::Uuid::new_v4())
    }

    /// The `AWS_*` variables a `govcfs serve` child needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The same settings by `object_store`'s names, for `Backend::s3_with` in-process.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", self.access_key.clone()),
            ("aws_secret_access_key", self.secret_key.clone()),
            ("aws_region", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = self.moto.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One unsigned `PUT url` with an empty body; true on a 2xx answer.
fn put_unsigned(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else { return false };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let request = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 2") || answer.starts_with("HTTP/1.0 2")
}
