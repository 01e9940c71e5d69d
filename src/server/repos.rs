//! Repository, tree, log, commit and event routes of `/api/v1`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::stream::{Stream, StreamExt};
use serde::Deserialize;

use super::error::ApiResult;
use super::AppState;
use crate::api::{
    CommitCreated, CommitRequest, CreateRepo, Entry, LogListing, RefEvent, RepoInfo, RepoList,
    TreeListing,
};

/// `?ref=` of read routes.
#[derive(Deserialize, Default)]
pub struct RefQuery {
    #[serde(rename = "ref")]
    pub reference: Option<String>,
}

/// `POST /api/v1/repos`
pub async fn create_repo(
    State(state): State<Arc<AppState>>,
    body: Result<Json<CreateRepo>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<RepoInfo>)> {
    let Json(request) = body.map_err(super::error::json_rejection)?;
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_repo(&request.id).await?),
    ))
}

/// `GET /api/v1/repos`
pub async fn list_repos(State(state): State<Arc<AppState>>) -> ApiResult<Json<RepoList>> {
    let repositories = state.store.list_repos().await?;
    Ok(Json(RepoList {
        count: repositories.len(),
        repositories,
    }))
}

/// `GET /api/v1/repos/:repo/tree` (the root)
pub async fn tree_root(
    state: State<Arc<AppState>>,
    Path(repo): Path<String>,
    query: Query<RefQuery>,
) -> ApiResult<Json<TreeListing>> {
    tree(state, Path((repo, String::new())), query).await
}

/// `GET /api/v1/repos/:repo/tree/*path`
pub async fn tree(
    State(state): State<Arc<AppState>>,
    Path((repo, path)): Path<(String, String)>,
    Query(query): Query<RefQuery>,
) -> ApiResult<Json<TreeListing>> {
    let (resolved, entries) = state
        .store
        .list_dir(&repo, query.reference.as_deref(), &path)
        .await?;
    let path = crate::base::paths::normalize_path(&path)?;
    Ok(Json(TreeListing {
        path,
        commit: resolved.commit,
        entries,
    }))
}

/// `GET /api/v1/repos/:repo/stat/*path`
pub async fn stat(
    State(state): State<Arc<AppState>>,
    Path((repo, path)): Path<(String, String)>,
    Query(query): Query<RefQuery>,
) -> ApiResult<Json<Entry>> {
    Ok(Json(
        state
            .store
            .stat(&repo, query.reference.as_deref(), &path)
            .await?
            .1,
    ))
}

/// `GET /api/v1/repos/:repo/stat` (the root)
pub async fn stat_root(
    state: State<Arc<AppState>>,
    Path(repo): Path<String>,
    query: Query<RefQuery>,
) -> ApiResult<Json<Entry>> {
    stat(state, Path((repo, String::new())), query).await
}

/// `?ref=&limit=` of the log.
#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(rename = "ref")]
    reference: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/repos/:repo/log`
pub async fn log(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Json<LogListing>> {
    let limit = query.limit.unwrap_or(100).min(10_000);
    Ok(Json(LogListing {
        commits: state
            .store
            .log(&repo, query.reference.as_deref(), limit)
            .await?,
    }))
}

/// `POST /api/v1/repos/:repo/commits`
pub async fn commit(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
    body: Result<Json<CommitRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<CommitCreated>)> {
    let Json(request) = body.map_err(super::error::json_rejection)?;
    let task = state.clone();
    let created = super::detached(async move { task.store.commit(&repo, &request).await }).await?;
    state.metrics.commits.fetch_add(1, Ordering::Relaxed);
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /api/v1/repos/:repo/events`: every ref update of this repository as `event: ref`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(repo): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    state.store.ensure_repo(&repo).await?;
    let updates = tokio_stream_from(state.store.subscribe())
        .take_until(state.shutdown.clone().cancelled_owned());
    let stream = updates.filter_map(move |update| {
        let repo = repo.clone();
        async move {
            match update {
                Some(u) if u.repo == repo => {
                    let data = RefEvent {
                        branch: u.branch,
                        commit: u.commit,
                        changed: u.changed,
                    };
                    Some(Ok(Event::default()
                        .event("ref")
                        .json_data(data)
                        .expect("serializes")))
                }
                Some(_) => None,
                // Lagged behind: tell the client to refresh everything.
                None => Some(Ok(Event::default().event("resync").data("{}"))),
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A broadcast receiver as a stream; `None` items mean messages were lost to lag.
fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<crate::store::RefUpdate>,
) -> impl Stream<Item = Option<crate::store::RefUpdate>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(u) => Some((Some(u), rx)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
}
