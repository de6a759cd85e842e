//! The recorded client history: every call a simulated buyer made, when it was invoked and
//! when it returned (simulated time), and what it got back. The checkers read only this and
//! the cluster's final state.

use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::WriteOp;

/// What a buyer asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Write(WriteOp),
    Read { sku: Vec<u8>, consistency: Consistency },
}

impl Call {
    pub fn sku(&self) -> &[u8] {
        match self {
            Call::Write(op) => op.sku(),
            Call::Read { sku, .. } => sku,
        }
    }
}

/// A SKU's four counts as a read returned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counts {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A write's outcome (business rejections included): the write is decided.
    Outcome(Outcome),
    /// A read's counts (`None`: the SKU does not exist).
    Stock(Option<Counts>),
    /// The call failed in a way that leaves it unknown whether the write happened (timeout,
    /// unavailable, ...): the write may take effect at any time after its invocation, or never.
    Indeterminate(String),
    /// The call failed and certainly changed nothing (or was a read).
    Failed(String),
}

/// One call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The buyer that made it.
    pub client: usize,
    /// Simulated time of the invocation and of the return, in ns since the run started.
    pub invoke_ns: u64,
    pub return_ns: u64,
    pub call: Call,
    pub answer: Answer,
}

impl Op {
    /// The op as one line for a failure report.
    pub fn describe(&self) -> String {
        format!(
            "client {} [{:.3}s .. {:.3}s] {:?} -> {:?}",
            self.client,
            self.invoke_ns as f64 / 1e9,
            self.return_ns as f64 / 1e9,
            self.call,
            self.answer
        )
    }
}

/// Every call of a run, in the order they returned.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// A stable digest of the whole history (times included): two runs of one seed must agree.
    pub fn digest(&self) -> u64 {
        let mut hash = Fnv::default();
        for op in &self.ops {
            hash.write(format!("{op:?}").as_bytes());
        }
        hash.0
    }
}

/// FNV-1a, 64 bit: stable across runs and builds (unlike `DefaultHasher`, which promises neither).
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        Fnv::write(self, bytes)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
