//! Per-client fairness: one client (IP address) may have only so many requests in progress
//! at once; beyond that it gets 429 with `Retry-After`, and the others are not starved.

use crate::api::ErrorCode;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Requests in progress per client.
#[derive(Default)]
pub struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

/// Holds one slot of a client until dropped.
struct Slot<'a> {
    counts: &'a ClientCounts,
    client: IpAddr,
}

impl ClientCounts {
    fn take(&self, client: IpAddr, max: usize) -> Option<Slot<'_>> {
        let mut counts = self.0.lock().expect("client counts lock");
        let n = counts.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self,
            client,
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().expect("client counts lock");
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// Refuses a request beyond the client's share (429 with `Retry-After`).
pub async fn limit_clients(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(client) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(request).await;
    };
    let Some(_slot) = state.clients.take(client, state.config.max_client_requests) else {
        log::debug!(
            "client {client} has {} requests in progress: refused one more",
            state.config.max_client_requests
        );
        return ApiError::too_many(
            ErrorCode::TooManyRequests,
            "too many requests in progress from this client; retry later",
        )
        .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_client_and_given_back() {
        let counts = ClientCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counts.take(a, 2).unwrap();
        let second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none());
        assert!(counts.take(b, 2).is_some());
        drop(first);
        assert!(counts.take(a, 2).is_some());
        drop(second);
        assert!(counts.0.lock().unwrap().is_empty());
    }
}
