//! The S3 backend: objects through `AmazonS3`, refs by conditional puts (`If-None-Match: *`
//! to create, `If-Match: <etag>` to move), so instances sharing a bucket cannot overwrite
//! each other's ref updates.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::Backend;
use crate::store::{Result, StoreError};

impl Backend {
    /// A backend on an S3 bucket, under `prefix` (may be empty), configured by the standard
    /// `AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, credentials, region).
    pub fn s3(bucket: &str, prefix: &str) -> Result<Self> {
        Self::s3_with(bucket, prefix, &[])
    }

    /// Like [`Backend::s3`], with settings that override the environment's, by their
    /// `object_store` names (`aws_endpoint`, `aws_allow_http`, `aws_access_key_id`…).
    pub fn s3_with(bucket: &str, prefix: &str, settings: &[(&str, &str)]) -> Result<Self> {
        // object_store's HTTP client is built without a TLS provider of its own; give it ring,
        // which the server's TLS already uses. Fails only if one is installed, which is fine.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in settings {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|_| StoreError::InvalidInput(format!("unknown S3 setting {key:?}")))?;
            builder = builder.with_config(key, *value);
        }
        let s3 = builder
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()?;
        let prefix = prefix.trim_matches('/');
        let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Backend {
            scratch: objects.clone(),
            objects,
            local_root: None,
            description: format!("s3://{bucket}/{prefix}"),
        })
    }

    /// Reads a ref and its version (ETag) from object storage.
    pub(super) async fn read_ref_remote(
        &self,
        path: &Path,
    ) -> Result<Option<(String, UpdateVersion)>> {
        match self.objects.get(path).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                let bytes = got.bytes().await?;
                Ok(Some((
                    String::from_utf8_lossy(&bytes).trim().to_string(),
                    version,
                )))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Compare-and-swap by conditional put: the put names the ETag read, so a ref moved
    /// by another instance in between fails it (412) instead of being overwritten.
    pub(super) async fn cas_ref_conditional(
        &self,
        path: &Path,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool> {
        let current = self.read_ref_versioned(path).await?;
        let mode = match (current, expected) {
            (None, None) => PutMode::Create,
            (Some((text, version)), Some(expected)) if text == expected => {
                if version.e_tag.is_none() {
                    return Err(StoreError::Io(std::io::Error::other(
                        "the object store gave no ETag for a ref: it cannot be updated safely",
                    )));
                }
                // Unquoted: radosgw (Ceph 16) refuses a quoted `If-Match` ETag, even the
                // current one, with 412; S3 and moto accept both forms.
                let e_tag = version.e_tag.map(|t| t.trim_matches('"').to_string());
                PutMode::Update(UpdateVersion {
                    e_tag,
                    version: version.version,
                })
            }
            _ => return Ok(false),
        };
        let options = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .objects
            .put_opts(path, PutPayload::from(new.to_string()), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
