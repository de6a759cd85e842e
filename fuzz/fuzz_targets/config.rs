//! Fuzz target: `ClusterConfig::parse` (`ledger/src/config.rs`), TOML text to a validated config.
//!
//! Checked: parsing never panics or hangs, whatever the text; a config it accepts validates
//! again, and its shards tile the key space: every SKU probed (each shard's bounds, just past
//! them, and a few others) belongs to exactly one shard.

#![no_main]

use ledger::config::ClusterConfig;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: flashledger_fuzz::LimitedAllocator = flashledger_fuzz::LimitedAllocator;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ClusterConfig::parse(text, "fuzz") else {
        return;
    };
    config.validate().expect("an accepted config validates again");
    let mut probes: Vec<Vec<u8>> = vec![Vec::new(), vec![0], vec![0xff; 3], b"sku-1".to_vec()];
    for shard in &config.shards {
        for bound in [&shard.start, &shard.end] {
            probes.push(bound.as_bytes().to_vec());
            probes.push([bound.as_bytes(), &[0]].concat());
            probes.push([bound.as_bytes(), &[0xff]].concat());
        }
    }
    for sku in &probes {
        let owners = config.shards.iter().filter(|shard| shard.contains(sku)).count();
        assert_eq!(owners, 1, "sku {sku:?} belongs to {owners} shards");
        let shard = config.shard_for_sku(sku).expect("every sku has a shard");
        assert!(shard.replicas.iter().all(|node| config.node(*node).is_some()));
    }
});
