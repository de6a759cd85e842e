//! Real PostgreSQL for tests: throwaway databases on the server `DATABASE_URL` names, and a
//! TCP proxy in front of it that a test can cut and restore (the server is shared, so the
//! tests simulate "Postgres restarted" by dropping every connection and refusing new ones).
//!
//! `scripts/pg-env.sh` (used by `scripts/test.sh`) sets `DATABASE_URL`: an existing server at
//! 127.0.0.1:5432, or a throwaway `initdb` cluster. Without it the Postgres tests skip, saying
//! so on stderr — except under CI (`CI=true`), where a missing database is a failure.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// The server URL, or `None` (with a loud note) when the tests cannot reach one.
pub fn server_url(test: &str) -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: DATABASE_URL is not set under CI; run the tests through scripts/test.sh")
        }
        _ => {
            eprintln!(
                "\n*** SKIPPING {test}: DATABASE_URL is not set and no PostgreSQL was started. \
                 Run scripts/test.sh (it finds or starts one) or export DATABASE_URL. ***\n"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{root}/{database}{query}")
}

/// (host, port) of a TCP server URL.
pub fn host_port(url: &str) -> (String, u16) {
    let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_string(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// Databases created for one test, dropped by [`Databases::drop_all`].
pub struct Databases {
    server: String,
    pub names: Vec<String>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Databases {
    /// Creates `count` empty databases with names unique to this process and call.
    pub async fn create(server: &str, label: &str, count: usize) -> Databases {
        let admin = connect(server).await;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut names = Vec::new();
        for index in 0..count {
            let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("fltest_{label}_{}_{stamp}_{serial}_{index}", std::process::id());
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("create database {name}: {e}"));
            names.push(name);
        }
        Databases {
            server: server.to_string(),
            names,
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.names.iter().map(|n| with_database(&self.server, n)).collect()
    }

    pub async fn drop_all(self) {
        let admin = connect(&self.server).await;
        for name in &self.names {
            if let Err(error) = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
            {
                eprintln!("could not drop test database {name}: {error}");
            }
        }
    }
}

/// A plain client (the connection task is spawned).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A TCP proxy to the Postgres server that can be cut (every connection dropped, new ones
/// refused) and restored: what a Postgres restart looks like to the shipper.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(target: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let accept_up = up.clone();
        let accept_generation = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut cut = accept_generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect((target.0.as_str(), target.1)).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, generation }
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// `url` rerouted through this proxy.
    pub fn route(&self, url: &str) -> String {
        let (host, port) = host_port(url);
        assert!(
            url.contains(&format!("{host}:{port}")),
            "DATABASE_URL must name host:port explicitly for the proxy: {url}"
        );
        url.replacen(&format!("{host}:{port}"), &format!("127.0.0.1:{}", self.port), 1)
    }
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
