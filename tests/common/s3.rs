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
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
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
            if put_unsigned(port, &format!("/{}", server.bucket)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within {MOTO_STARTUP:?}"
            );
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

    /// The same settings by `object_store`'s names (the variables' names in lower case), for
    /// `Backend::s3_with` in-process.
    pub fn settings(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
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

/// One unsigned `PUT` of an empty body to `target` on the moto server at `port`; true on 2xx.
fn put_unsigned(port: u16, target: &str) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    super::http_request(addr, "PUT", target, &[], b"").is_ok_and(|r| (200..300).contains(&r.status))
}
