//! Repositories, trees, commits and the log.

use reqwest::Method;

use super::{CancellationToken, Client, ClientError, Result};
use crate::api::{
    CommitCreated, CommitRequest, CreateRepo, Entry, LogListing, RepoInfo, RepoList, TreeListing,
};

fn ref_query(reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!("?ref={r}"),
        None => String::new(),
    }
}

impl Client {
    /// Lists the repositories of the server.
    pub async fn list_repos(&self, cancel: &CancellationToken) -> Result<RepoList> {
        let url = format!("{}/api/v1/repos", self.server);
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Creates this client's repository.
    pub async fn create_repo(&self, cancel: &CancellationToken) -> Result<RepoInfo> {
        let url = format!("{}/api/v1/repos", self.server);
        let body = CreateRepo {
            id: self.repo.clone(),
        };
        let response = self
            .send(cancel, || self.request(Method::POST, &url).json(&body))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Lists the directory at `path` ("" is the root).
    pub async fn list_dir(
        &self,
        path: &str,
        reference: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<TreeListing> {
        let url = self.url(&format!(
            "/tree/{}{}",
            crate::base::paths::encode_path(path),
            ref_query(reference)
        ));
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Describes the entry at `path`.
    pub async fn stat(
        &self,
        path: &str,
        reference: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Entry> {
        let path = path.trim_matches('/');
        let url = if path.is_empty() {
            self.url(&format!("/stat{}", ref_query(reference)))
        } else {
            self.url(&format!(
                "/stat/{}{}",
                crate::base::paths::encode_path(path),
                ref_query(reference)
            ))
        };
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// Applies a commit. A 409 comes back as [`ClientError::Http`] with the conflicting path.
    pub async fn commit(
        &self,
        request: &CommitRequest,
        cancel: &CancellationToken,
    ) -> Result<CommitCreated> {
        let url = self.url("/commits");
        let response = self
            .send(cancel, || self.request(Method::POST, &url).json(request))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// The newest commits of a ref.
    pub async fn log(
        &self,
        reference: Option<&str>,
        limit: usize,
        cancel: &CancellationToken,
    ) -> Result<LogListing> {
        let mut url = self.url(&format!("/log?limit={limit}"));
        if let Some(r) = reference {
            url.push_str(&format!("&ref={r}"));
        }
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.json().await.map_err(ClientError::Transport)
    }

    /// The server's `/metrics` page.
    pub async fn metrics_text(&self, cancel: &CancellationToken) -> Result<String> {
        let url = format!("{}/metrics", self.server);
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        response.text().await.map_err(ClientError::Transport)
    }
}

impl Client {
    /// Subscribes to the repository's change events (`event: ref`). The stream ends when the
    /// connection does; callers reconnect.
    pub async fn ref_events(
        &self,
        cancel: &CancellationToken,
    ) -> Result<impl futures::Stream<Item = Result<crate::api::RefEvent>> + Send + 'static> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let url = self.url("/events");
        let response = self
            .send(cancel, || self.request(Method::GET, &url))
            .await?;
        Ok(response
            .bytes_stream()
            .eventsource()
            .filter_map(|event| async move {
                match event {
                    Ok(e) if e.event == "ref" => Some(
                        serde_json::from_str(&e.data)
                            .map_err(|err| ClientError::Protocol(format!("bad event: {err}"))),
                    ),
                    // A resync means events were lost: report it as an event that changed everything.
                    Ok(e) if e.event == "resync" => Some(Ok(crate::api::RefEvent {
                        branch: String::new(),
                        commit: String::new(),
                        changed: vec![String::new()],
                    })),
                    Ok(_) => None,
                    Err(err) => Some(Err(ClientError::Protocol(format!("event stream: {err}")))),
                }
            }))
    }
}
