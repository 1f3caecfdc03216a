//! The HTTP client for webhook deliveries: fixed timeouts, no redirects, bounded response
//! reads, and an SSRF guard on the addresses a name resolves to at send time.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use shared::{config::WebhookSettings, domain::webhook::check_resolved};

/// Most of a response body read.
pub const MAX_READ: usize = 64 * 1024;
/// Most of a response body kept with the attempt.
pub const MAX_KEPT: usize = 4 * 1024;

/// Resolves names and refuses internal addresses (unless allowed), so the address checked is
/// the address connected to.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            check_resolved(&ips, allow_private)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

pub fn client(settings: &WebhookSettings) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve names itself, past the address check.
        .no_proxy()
        .pool_max_idle_per_host(512)
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .user_agent(concat!(
            "billing-platform-webhooks/",
            env!("CARGO_PKG_VERSION")
        ))
        .dns_resolver(GuardedResolver {
            allow_private: settings.allow_private_targets,
        })
        .build()
}

/// What the receiver said.
#[derive(Debug)]
pub struct Answer {
    pub status: Option<u16>,
    /// The first 4 KiB of the body, as text.
    pub body: String,
    pub error: Option<String>,
    pub latency: Duration,
}

/// POSTs a signed webhook and reads at most 64 KiB of the answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Answer {
    let started = Instant::now();
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut resp = match req.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                status: None,
                body: String::new(),
                error: Some(describe(&e)),
                latency: started.elapsed(),
            };
        }
    };
    let status = resp.status().as_u16();
    let mut kept: Vec<u8> = Vec::new();
    let mut read = 0usize;
    let mut error = None;
    while read < MAX_READ {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = MAX_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(format!("reading the response: {}", describe(&e)));
                break;
            }
        }
    }
    Answer {
        status: Some(status),
        body: text(&kept),
        error,
        latency: started.elapsed(),
    }
}

/// Bytes as text PostgreSQL can store: invalid UTF-8 and NUL become U+FFFD.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

/// The error with its causes, for the attempt log (a refused address says so).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    shared::jobs::truncate(&text.replace('\0', "\u{FFFD}"), 1000)
}
