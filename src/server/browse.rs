//! The browsable view (CONTRACT §2): `/REPO/PATH` as plain static files and HTML indexes
//! that browsers, curl, wget, `rclone --http-url` and httpdirfs can read.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::blobs::serve_blob;
use super::error::ApiResult;
use super::repos::RefQuery;
use super::AppState;
use crate::api::{Entry, EntryType};
use crate::base::paths::encode_segment;

/// `GET /:repo` redirects to the root index.
pub async fn repo_redirect(Path(repo): Path<String>) -> Redirect {
    Redirect::permanent(&format!("/{}/", encode_segment(&repo)))
}

/// `GET /:repo/` is the root index.
pub async fn browse_root(
    state: State<Arc<AppState>>,
    Path(repo): Path<String>,
    query: Query<RefQuery>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    browse(state, Path((repo, String::new())), query, method, headers).await
}

/// `GET|HEAD /:repo/*path`: a file's bytes, or a directory's index when the path ends in `/`.
pub async fn browse(
    State(state): State<Arc<AppState>>,
    Path((repo, path)): Path<(String, String)>,
    Query(query): Query<RefQuery>,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, entry) = state
        .store
        .stat(&repo, query.reference.as_deref(), &path)
        .await?;
    // Links and redirects keep the ref being browsed.
    let ref_suffix = match &query.reference {
        Some(r) => format!("?ref={}", encode_segment(r)),
        None => String::new(),
    };
    match entry.kind {
        EntryType::Directory if !path.is_empty() && !path.ends_with('/') => {
            let name = encode_segment(&entry.name);
            Ok(Redirect::permanent(&format!("{name}/{ref_suffix}")).into_response())
        }
        EntryType::Directory => {
            let (_, entries) = state
                .store
                .list_dir(&repo, query.reference.as_deref(), &path)
                .await?;
            let page = index_page(&repo, &entry.path, &entries, &ref_suffix);
            // For HEAD, axum drops the body but keeps its length.
            Ok(Html(page).into_response())
        }
        EntryType::File | EntryType::Symlink => {
            if path.ends_with('/') {
                return Err(crate::store::StoreError::NotFound(format!(
                    "directory {:?}",
                    entry.path
                ))
                .into());
            }
            serve_blob(
                &state,
                &repo,
                &entry.hash,
                &method,
                &headers,
                Some(entry.mtime),
            )
            .await
        }
    }
}

/// The HTML index of directory `path` of `repo`: one link per entry, with its time and size
/// in the layout that httpdirfs and `rclone --http-url` parse.
fn index_page(repo: &str, path: &str, entries: &[Entry], ref_suffix: &str) -> String {
    let title = html_escape(&format!("/{repo}/{path}"));
    let mut page = format!("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<pre>\n");
    if !path.is_empty() {
        let _ = writeln!(page, "<a href=\"../{ref_suffix}\">../</a>");
    }
    for e in entries {
        let is_dir = e.kind == EntryType::Directory;
        let slash = if is_dir { "/" } else { "" };
        let href = encode_segment(&e.name);
        let _ = writeln!(
            page,
            "<a href=\"{href}{slash}{ref_suffix}\">{}{slash}</a> {} {}",
            html_escape(&e.name),
            crate::base::time::http_date(e.mtime),
            if is_dir {
                "-".to_string()
            } else {
                e.size.to_string()
            }
        );
    }
    page.push_str("</pre></body></html>\n");
    page
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
