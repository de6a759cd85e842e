//! The two log entries of a merge, as they change a shard's applied image: `Freeze` in the
//! right shard's log (it stops applying operations, so its state is final), `Merge` in the left
//! shard's log (the right shard's state joins it and its range grows), and `Thaw`, which undoes
//! a freeze when the left shard's log refused the merge. Pure functions of (image, entry): every
//! replica answers and changes alike. The ledger half of the merge is
//! [`LedgerState::absorb`]; the protocol around the entries is `crate::node::reshape`.

use crate::applied::ShardImage;
use crate::state_machine::command::Outcome;
use crate::state_machine::state::FrozenLedger;
use crate::state_machine::state::LedgerState;
use crate::types::ShardId;

impl ShardImage {
    /// `Freeze { into }`: from here on the shard applies no operation (its range contains
    /// nothing, so every operation and read is refused as routed to the wrong shard, and the
    /// client looks again until the map shows the merge). The epoch stays: it is the map's, and
    /// the map changes only once the merge is done (or not at all, if it is refused and the
    /// shard thawed). Done again for the same `into`: `Ok`, nothing changes.
    pub fn freeze_for_merge(&mut self, into: ShardId) -> Outcome {
        match self.bounds.frozen_into {
            Some(frozen_for) if frozen_for == into => Outcome::Ok,
            Some(other) => Outcome::Rejected {
                reason: format!("the shard is already frozen for a merge into shard {other}"),
            },
            None => {
                self.bounds.frozen_into = Some(into);
                Outcome::Ok
            }
        }
    }

    /// `Thaw { into }`: a shard frozen for `into` serves its range again. Anything else: `Ok`,
    /// nothing changes (a thaw repeated, or one for a merge this shard never froze for).
    pub fn thaw(&mut self, into: ShardId) -> Outcome {
        if self.bounds.frozen_into == Some(into) {
            self.bounds.frozen_into = None;
        }
        Outcome::Ok
    }

    /// `Merge`: the frozen state of shard `right`, whose range is `[right_start, right_end)`
    /// (empty end: unbounded), joins this shard, which must end where `right` starts (or be
    /// unbounded: a shard never split trusts the map). Afterwards the range ends at
    /// `right_end` and the epoch moves on. `Rejected` (nothing changed) when the ranges are not
    /// adjacent, the state does not decode, holds a SKU outside its range, or does not fit
    /// ([`LedgerState::absorb`]); `Ok` without change for a `right` already merged.
    pub fn merge(&mut self, right: ShardId, right_start: &[u8], right_end: &[u8], state: &[u8]) -> Outcome {
        let refused = |reason: String| Outcome::Rejected { reason };
        if self.bounds.merged.contains(&right) {
            return Outcome::Ok;
        }
        if self.bounds.frozen_into.is_some() {
            return refused("a frozen shard takes no merge".into());
        }
        let ends_where_right_starts = match &self.bounds.end {
            Some(end) => end.as_slice() == right_start,
            None => right_start > self.bounds.start.as_slice(),
        };
        if !ends_where_right_starts {
            return refused(format!(
                "shard {right} starts at {:?}, not where this shard ends ({:?})",
                String::from_utf8_lossy(right_start),
                self.bounds.end.as_deref().map(String::from_utf8_lossy)
            ));
        }
        let frozen: FrozenLedger = match bincode::deserialize(state) {
            Ok(frozen) => frozen,
            Err(error) => return refused(format!("shard {right}'s state does not decode: {error}")),
        };
        let right_state = match LedgerState::from_frozen(frozen) {
            Ok(state) => state,
            Err(error) => return refused(format!("shard {right}'s state: {error}")),
        };
        let outside = right_state
            .skus
            .keys()
            .find(|sku| sku.as_slice() < right_start || (!right_end.is_empty() && sku.as_slice() >= right_end));
        if let Some(sku) = outside {
            return refused(format!(
                "shard {right}'s state holds sku {:?}, outside its range",
                String::from_utf8_lossy(sku)
            ));
        }
        if let Err(reason) = self.ledger.absorb(right_state) {
            return refused(reason);
        }
        self.bounds.end = (!right_end.is_empty()).then(|| right_end.to_vec());
        self.bounds.epoch += 1;
        self.bounds.merged.push(right);
        Outcome::Ok
    }
}
