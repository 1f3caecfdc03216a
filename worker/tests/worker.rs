//! The worker binary starts against real PostgreSQL and Redis, answers health checks, and
//! exits 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn the_worker_reports_ready_and_stops_cleanly_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_billing-worker"))
        .env("APP_SECRET", "0123456789abcdef0123456789abcdef")
        .env("WORKER_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url_for("postgres"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Poll until the listener answers (bounded: 100 × 100 ms).
    let mut ready = None;
    for _ in 0..100 {
        if let Some(resp) = http_get(port, "/readyz") {
            ready = Some(resp);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = ready.expect("worker answered");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("postgres=ok redis=ok"), "{ready}");
    let health = http_get(port, "/healthz").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"));
    let metrics = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("worker_idempotency_keys_purged_total"));

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut exit = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = exit.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("worker did not stop within 10 s of SIGTERM")
    });
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn the_worker_refuses_to_start_without_its_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_billing-worker"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("APP_SECRET")
    );
}

/// The configured server with another database name (the worker needs only a reachable one).
fn database_url_for(name: &str) -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/billing".into());
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h.to_owned(), format!("?{q}")),
        None => (url.clone(), String::new()),
    };
    let base = match head[scheme_end..].find('/') {
        Some(i) => head[..scheme_end + i].to_owned(),
        None => head,
    };
    format!("{base}/{name}{query}")
}
