//! The Rust client for a flashledger cluster: what a checkout service links to reserve,
//! confirm, cancel and read stock.
//!
//! [`Client::connect`] discovers the shard map from any reachable seed node; every call then
//! routes its SKU to the owning shard's leader over one shared HTTP/2 channel per node, follows
//! the node's answers (not-leader redirects, stale-epoch refreshes), and retries the *same*
//! request under a bounded budget (see [`ClientOptions`]). Business answers such as sold out
//! come back as [`Outcome`] values; [`ClientError`] is only for requests the cluster could not
//! decide, and says whether the write was definitely not applied ([`ClientError::InvalidArgument`])
//! or might have been ([`ClientError::Timeout`], [`ClientError::Unavailable`]: retry with the
//! same `order_id`, which the ledger deduplicates).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use flashledger_client::{Client, ClientOptions, Consistency, Outcome, SaleRules};
//!
//! # async fn run() -> Result<(), flashledger_client::ClientError> {
//! let client = Client::connect(vec!["127.0.0.1:7101".into()], ClientOptions::default()).await?;
//! client.put_sku("sneaker-42", 100, SaleRules::default()).await?;
//! match client
//!     .reserve("sneaker-42", 1, "alice", "order-1", Some(Duration::from_secs(60)))
//!     .await?
//! {
//!     Outcome::Reserved { .. } => {
//!         client.confirm("sneaker-42", "order-1").await?;
//!     }
//!     Outcome::SoldOut { available } => println!("only {available} left"),
//!     other => println!("not reserved: {other:?}"),
//! }
//! if let Some(stock) = client.get_stock("sneaker-42", Consistency::Linearizable).await? {
//!     assert_eq!(stock.available + stock.reserved + stock.sold, stock.total);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`client`]: [`Client`], the typed API (one method per operation, `batch`, `watch`).
//! - `router`: shard-map discovery and the bounded retry loop; the status-code contract as
//!   client actions.
//! - [`channels`]: one lazily connected, shared `tonic` channel per node address.
//! - [`credentials`]: [`Credentials`], TLS material and the bearer token a call carries.
//! - [`shard_map`]: [`ShardMap`], bytewise range routing and learned leaders.
//! - [`convert`]: the only place wire (protobuf) and domain types meet.
//! - [`types`]: the domain values: [`Outcome`], [`Stock`], [`WriteOp`], [`SaleRules`], ...
//! - [`options`]: [`ClientOptions`], every bound with its unit.
//! - [`backoff`]: [`Backoff`], the project's one jittered exponential backoff (the ledger's
//!   order shipper uses it too).
//! - [`breaker`]: per-node circuit breakers, so calls route around a node that stopped answering.
//! - [`retry_budget`]: [`RetryBudget`], retries bounded to a share of calls.
//! - [`error`]: [`ClientError`] and what each variant means for a write.
//! - [`watch`]: [`WatchStream`] and [`WatchEvents`], the stock-change feeds.
//! - [`stock_cache`]: [`StockCache`], a SKU range's counts kept live from Watch, for product
//!   pages: `get(sku)` answers locally with its [`Staleness`].
//!
//! The client reads only `tokio` time and its only randomness is the backoff's jitter, seeded
//! from the simulated clock under madsim, so it runs unchanged and replays exactly in the
//! simulator (`--cfg madsim`).

pub mod backoff;
pub mod breaker;
pub mod channels;
pub mod client;
mod coalesce;
pub mod convert;
pub mod credentials;
pub mod error;
pub mod options;
pub mod retry_budget;
mod router;
pub mod shard_map;
pub mod stock_cache;
pub mod types;
pub mod watch;

pub use backoff::Backoff;
pub use channels::{NodeChannel, node_channel};
pub use client::{Client, SKU_BYTES_MAX};
pub use credentials::Credentials;
pub use error::ClientError;
pub use options::ClientOptions;
pub use retry_budget::RetryBudget;
pub use shard_map::{NodeId, Shard, ShardMap};
pub use stock_cache::{CacheSource, CachedStock, Staleness, StockCache, StockCacheOptions, StockCacheStatus};
pub use types::{
    Consistency, Outcome, Priority, RateLimit, SaleRules, Stock, StockChange, WatchEvent, WatchProgress, WriteOp,
};
pub use watch::{WatchEvents, WatchFeed, WatchStream};
