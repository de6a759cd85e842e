//! A measurement, not a test (ignored by default): 8 shards append 4 KiB entries concurrently
//! over a real [`FileBackend`] for a few seconds and we print appends/s and fdatasyncs/s. Group
//! commit shows as many appends per fdatasync. Run with:
//! `cargo test --release -p flashledger-ledger --test wal_group_commit_measure -- --ignored --nocapture`

use std::time::Duration;
use std::time::Instant;

use ledger::state_machine::command::CommandBody;
use ledger::state_machine::command::LogCommand;
use ledger::state_machine::command::Operation;
use ledger::storage::FileBackend;
use ledger::storage::Wal;
use ledger::storage::WalOptions;
use ledger::types::Entry;
use ledger::types::TypeConfig;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;

/// Shards appending at once; `WAL_MEASURE_SHARDS` overrides (1 gives the no-grouping baseline).
const SHARDS_DEFAULT: u64 = 8;
const ENTRY_BYTES: usize = 4096;
const RUN_TIME: Duration = Duration::from_secs(3);

fn entry_of_about_4_kib(index: u64) -> Entry {
    let operation = Operation::Reserve {
        sku: b"hot-sku".to_vec(),
        qty: 1,
        user: "u".repeat(ENTRY_BYTES - 64),
        order_id: format!("order-{index}"),
        ttl_ms: 0,
        first_attempt_ms: index,
    };
    let command = LogCommand {
        timestamp_ms: index,
        body: CommandBody::Batch(vec![operation]),
    };
    Entry::new_normal(openraft::testing::log_id::<TypeConfig>(1, 1, index), command)
}

#[test]
#[ignore = "measurement; run explicitly with --ignored --nocapture"]
fn measure_group_commit_over_files() -> anyhow::Result<()> {
    let shards: u64 = std::env::var("WAL_MEASURE_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHARDS_DEFAULT);
    let directory = tempfile::tempdir()?;
    let wal = Wal::open(FileBackend::open(directory.path())?, WalOptions::default())?;
    let started = Instant::now();
    let appends: u64 = TypeConfig::run(async {
        let shards = (1..=shards).map(|shard| {
            let mut store = wal.log_store(shard);
            async move {
                let mut index = 1;
                while started.elapsed() < RUN_TIME {
                    let (sender, receiver) = TypeConfig::oneshot();
                    store
                        .append([entry_of_about_4_kib(index)], IOFlushed::signal(sender))
                        .await?;
                    receiver.await.map_err(|_| anyhow::anyhow!("callback dropped"))??;
                    index += 1;
                }
                anyhow::Ok(index - 1)
            }
        });
        let counts = futures::future::try_join_all(shards).await?;
        anyhow::Ok(counts.into_iter().sum())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    println!(
        "{shards} shards, 4 KiB entries, one in flight per shard, {seconds:.1} s: {:.0} appends/s, {:.0} fdatasyncs/s, \
         {:.1} appends per fdatasync, {:.1} MiB/s",
        appends as f64 / seconds,
        stats.syncs as f64 / seconds,
        appends as f64 / stats.syncs.max(1) as f64,
        stats.bytes_written as f64 / seconds / (1024.0 * 1024.0),
    );
    Ok(())
}
