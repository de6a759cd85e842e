//! [`PostgresSink`]: the production [`ShippingSink`], one tokio-postgres connection per
//! PostgreSQL shard, created lazily and dropped on any error so the next call reconnects.
//!
//! The schema is the sink's own: on connect it applies the versioned [`MIGRATIONS`] it has not
//! applied yet, in one transaction under an advisory lock (two shippers starting together must
//! not both run version 1), and records each version in `flashledger_schema`. Each database also
//! remembers which shard of how many it is (`flashledger_shard`), so reordering or resizing the
//! `[[postgres]]` list — which would silently re-route orders — is refused instead.
//!
//! A batch is one transaction: ensure the watermark row exists, move it by compare-and-set
//! (`UPDATE .. WHERE next_seq = expected`; the row lock also serializes racing shippers, and
//! the loser's re-checked condition fails), then insert the rows with one `UNNEST` statement.
//! An order already in the table with the same fields is skipped (`ON CONFLICT (order_id) DO
//! NOTHING`): a split hands the unshipped events of the SKUs that leave to the new shard, whose
//! shipper starts from its own watermark, and some of them may have shipped from the old shard
//! just before (in Postgres, not yet marked shipped in its log). The row exists once either way.
//! Every call has a deadline; a timed-out connection is dropped, which rolls its transaction
//! back on the server.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::sync::MutexGuard;
use tokio_postgres::Client;
use tokio_postgres::NoTls;

use crate::shipping::sink::CommitOutcome;
use crate::shipping::sink::ShippedOrder;
use crate::shipping::sink::ShippingSink;
use crate::shipping::sink::SinkError;
use crate::shipping::sink::Watermark;
use crate::types::ShardId;

/// Versioned schema migrations, applied in order, each once.
/// Append new versions; never edit an applied one.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE orders (
        order_id      text        PRIMARY KEY,
        sku           bytea       NOT NULL,
        qty           bigint      NOT NULL CHECK (qty > 0),
        user_id       text        NOT NULL,
        ledger_shard  bigint      NOT NULL,
        log_index     bigint      NOT NULL,
        event_seq     bigint      NOT NULL,
        confirmed_at  timestamptz NOT NULL
    );
    CREATE TABLE shipping_watermarks (
        ledger_shard   bigint      NOT NULL,
        postgres_shard integer     NOT NULL,
        next_seq       bigint      NOT NULL,
        last_index     bigint      NOT NULL,
        last_order_id  text        NOT NULL,
        updated_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (ledger_shard, postgres_shard)
    );
    CREATE TABLE flashledger_shard (
        singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        postgres_shard integer NOT NULL,
        shard_count    integer NOT NULL
    );",
)];

/// Serializes concurrent migrators of one database ("flashledger" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x666c_6173_686c_6564;

/// Ships to N PostgreSQL databases, `urls[i]` being shard `i`.
pub struct PostgresSink {
    urls: Vec<String>,
    connections: Vec<Mutex<Option<Client>>>,
    statement_timeout: Duration,
}

impl PostgresSink {
    pub fn new(urls: Vec<String>, statement_timeout: Duration) -> Self {
        let connections = urls.iter().map(|_| Mutex::new(None)).collect();
        PostgresSink {
            urls,
            connections,
            statement_timeout,
        }
    }

    /// Shard `shard`'s connection slot, connected (and migrated) first if needed.
    async fn connected(&self, shard: usize) -> Result<MutexGuard<'_, Option<Client>>, SinkError> {
        let slot = self.connections.get(shard).ok_or_else(|| SinkError::Misconfigured {
            shard,
            message: format!("only {} shards are configured", self.urls.len()),
        })?;
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.deadline(shard, self.connect(shard)).await?);
        }
        Ok(guard)
    }

    async fn deadline<T>(
        &self,
        shard: usize,
        work: impl Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.statement_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(
                shard,
                format!("no answer within {} ms", self.statement_timeout.as_millis()),
            )),
        }
    }

    async fn connect(&self, shard: usize) -> Result<Client, SinkError> {
        let (mut client, connection) = tokio_postgres::connect(&self.urls[shard], NoTls)
            .await
            .map_err(|e| pg_failure(shard, &e))?;
        // The connection future does the socket I/O; it ends when the client is dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(shard, %error, "postgres connection closed");
            }
        });
        migrate(&mut client).await.map_err(|e| pg_failure(shard, &e))?;
        self.check_identity(&client, shard).await?;
        Ok(client)
    }

    /// Records (first time) or checks this database's place among the shards.
    async fn check_identity(&self, client: &Client, shard: usize) -> Result<(), SinkError> {
        let count = self.urls.len() as i32;
        client
            .execute(
                "INSERT INTO flashledger_shard (postgres_shard, shard_count) VALUES ($1, $2)
                 ON CONFLICT (singleton) DO NOTHING",
                &[&(shard as i32), &count],
            )
            .await
            .map_err(|e| pg_failure(shard, &e))?;
        let row = client
            .query_one("SELECT postgres_shard, shard_count FROM flashledger_shard", &[])
            .await
            .map_err(|e| pg_failure(shard, &e))?;
        let (recorded_shard, recorded_count): (i32, i32) = (row.get(0), row.get(1));
        if (recorded_shard, recorded_count) != (shard as i32, count) {
            return Err(SinkError::Misconfigured {
                shard,
                message: format!(
                    "this database is shard {recorded_shard} of {recorded_count}, but is listed as \
                     shard {shard} of {count}: orders would be routed to the wrong shard"
                ),
            });
        }
        Ok(())
    }
}

/// Applies every migration the database has not seen, all in one transaction that first takes
/// an advisory lock: concurrent starters wait for each other instead of racing `CREATE TABLE`.
pub async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS flashledger_schema (
                version    integer     PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
        let applied = transaction
            .query_opt("SELECT 1 FROM flashledger_schema WHERE version = $1", &[version])
            .await?
            .is_some();
        if !applied {
            transaction.batch_execute(sql).await?;
            transaction
                .execute("INSERT INTO flashledger_schema (version) VALUES ($1)", &[version])
                .await?;
            tracing::info!(version, "applied postgres schema migration");
        }
    }
    transaction.commit().await
}

/// A Postgres error with the server's SQLSTATE and message (its `Display` says only "db error").
fn pg_failure(shard: usize, error: &tokio_postgres::Error) -> SinkError {
    match error.as_db_error() {
        Some(db) => unavailable(shard, format!("{} ({})", db.message(), db.code().code())),
        None => unavailable(shard, error),
    }
}

fn unavailable(shard: usize, error: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable {
        shard,
        message: error.to_string(),
    }
}

/// Postgres `bigint` is signed; sequence numbers and indexes stay far below 2^63.
fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn watermark_from(row: &tokio_postgres::Row) -> Watermark {
    Watermark {
        next_seq: row.get::<_, i64>(0).max(0) as u64,
        last_index: row.get::<_, i64>(1).max(0) as u64,
        last_order_id: row.get(2),
    }
}

impl ShippingSink for PostgresSink {
    fn shard_count(&self) -> usize {
        self.urls.len()
    }

    async fn watermark(&self, postgres_shard: usize, ledger_shard: ShardId) -> Result<Watermark, SinkError> {
        let mut guard = self.connected(postgres_shard).await?;
        let Some(client) = guard.as_mut() else {
            return Err(unavailable(postgres_shard, "not connected"));
        };
        let work = read_watermark(client, postgres_shard, ledger_shard);
        let result = self.deadline(postgres_shard, work).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn commit(
        &self,
        postgres_shard: usize,
        ledger_shard: ShardId,
        expected: Watermark,
        new: Watermark,
        orders: &[ShippedOrder],
    ) -> Result<CommitOutcome, SinkError> {
        let columns = Columns::of(orders);
        let mut guard = self.connected(postgres_shard).await?;
        let Some(client) = guard.as_mut() else {
            return Err(unavailable(postgres_shard, "not connected"));
        };
        let work = commit_batch(client, postgres_shard, ledger_shard, expected, new, &columns);
        let result = self.deadline(postgres_shard, work).await;
        if result.is_err() {
            // Dropping the connection rolls back whatever the transaction had done.
            *guard = None;
        }
        result
    }
}

async fn read_watermark(client: &Client, postgres_shard: usize, ledger_shard: ShardId) -> Result<Watermark, SinkError> {
    let row = client
        .query_opt(
            "SELECT next_seq, last_index, last_order_id FROM shipping_watermarks
             WHERE ledger_shard = $1 AND postgres_shard = $2",
            &[&signed(ledger_shard), &(postgres_shard as i32)],
        )
        .await
        .map_err(|e| pg_failure(postgres_shard, &e))?;
    Ok(row.map(|r| watermark_from(&r)).unwrap_or_default())
}

/// One batch, one transaction: watermark compare-and-set first (its row lock serializes racing
/// shippers), then the rows.
async fn commit_batch(
    client: &mut Client,
    postgres_shard: usize,
    ledger_shard: ShardId,
    expected: Watermark,
    new: Watermark,
    columns: &Columns,
) -> Result<CommitOutcome, SinkError> {
    let fail = |e: tokio_postgres::Error| pg_failure(postgres_shard, &e);
    let ledger_shard = signed(ledger_shard);
    let shard = postgres_shard as i32;
    let transaction = client.transaction().await.map_err(fail)?;
    transaction
        .execute(
            "INSERT INTO shipping_watermarks (ledger_shard, postgres_shard, next_seq, last_index, last_order_id)
             VALUES ($1, $2, 0, 0, '') ON CONFLICT DO NOTHING",
            &[&ledger_shard, &shard],
        )
        .await
        .map_err(fail)?;
    let moved = transaction
        .execute(
            "UPDATE shipping_watermarks
             SET next_seq = $3, last_index = $4, last_order_id = $5, updated_at = now()
             WHERE ledger_shard = $1 AND postgres_shard = $2
               AND next_seq = $6 AND last_index = $7 AND last_order_id = $8",
            &[
                &ledger_shard,
                &shard,
                &signed(new.next_seq),
                &signed(new.last_index),
                &new.last_order_id,
                &signed(expected.next_seq),
                &signed(expected.last_index),
                &expected.last_order_id,
            ],
        )
        .await
        .map_err(fail)?;
    if moved == 0 {
        let row = transaction
            .query_one(
                "SELECT next_seq, last_index, last_order_id FROM shipping_watermarks
                 WHERE ledger_shard = $1 AND postgres_shard = $2",
                &[&ledger_shard, &shard],
            )
            .await
            .map_err(fail)?;
        transaction.rollback().await.map_err(fail)?;
        return Ok(CommitOutcome::WatermarkMoved {
            current: watermark_from(&row),
        });
    }
    if !columns.order_ids.is_empty() {
        // An order already in the table is skipped if it is the same order (see the module
        // docs); one with other fields is another order under a reused id, and stops shipping
        // with that said, as the primary key did before. The main query reads the table as it
        // was before the insert, so it sees exactly the rows the insert skipped.
        let different = transaction
            .query(
                "WITH input AS (
                     SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::int8[], $4::text[], $5::int8[],
                                          $6::int8[], $7::int8[], $8::int8[]) AS t(o, s, q, u, l, i, e, c)
                 ), inserted AS (
                     INSERT INTO orders
                         (order_id, sku, qty, user_id, ledger_shard, log_index, event_seq, confirmed_at)
                     SELECT o, s, q, u, l, i, e, to_timestamp(c / 1000.0) FROM input
                     ON CONFLICT (order_id) DO NOTHING
                 )
                 SELECT input.o FROM input JOIN orders ON orders.order_id = input.o
                 WHERE orders.sku <> input.s OR orders.qty <> input.q OR orders.user_id <> input.u",
                &[
                    &columns.order_ids,
                    &columns.skus,
                    &columns.qtys,
                    &columns.users,
                    &columns.ledger_shards,
                    &columns.log_indexes,
                    &columns.event_seqs,
                    &columns.confirmed_at_ms,
                ],
            )
            .await
            .map_err(fail)?;
        if let Some(row) = different.first() {
            let order_id: String = row.get(0);
            return Err(SinkError::Misconfigured {
                shard: postgres_shard,
                message: format!(
                    "order {order_id:?} is already in the orders table with another SKU, quantity or \
                     user: an order id reused for another order (nothing of this batch was written)"
                ),
            });
        }
    }
    transaction.commit().await.map_err(fail)?;
    Ok(CommitOutcome::Committed)
}

/// A batch as column arrays, for one `INSERT .. SELECT FROM UNNEST` round trip.
struct Columns {
    order_ids: Vec<String>,
    skus: Vec<Vec<u8>>,
    qtys: Vec<i64>,
    users: Vec<String>,
    ledger_shards: Vec<i64>,
    log_indexes: Vec<i64>,
    event_seqs: Vec<i64>,
    confirmed_at_ms: Vec<i64>,
}

impl Columns {
    fn of(orders: &[ShippedOrder]) -> Self {
        Columns {
            order_ids: orders.iter().map(|o| o.order_id.clone()).collect(),
            skus: orders.iter().map(|o| o.sku.clone()).collect(),
            qtys: orders.iter().map(|o| signed(o.qty)).collect(),
            users: orders.iter().map(|o| o.user.clone()).collect(),
            ledger_shards: orders.iter().map(|o| signed(o.ledger_shard)).collect(),
            log_indexes: orders.iter().map(|o| signed(o.log_index)).collect(),
            event_seqs: orders.iter().map(|o| signed(o.event_seq)).collect(),
            confirmed_at_ms: orders.iter().map(|o| signed(o.confirmed_at_ms)).collect(),
        }
    }
}
