//! Who is calling, and may they: the roles of callers, the access each RPC needs, caller
//! identity from a certificate or a bearer token, and (outside the simulator) the TLS
//! material and the tower layer that enforces all of it before any service sees a request.
//!
//! A node authenticates every connection with mutual TLS against the cluster's CA. Nodes
//! are named in their certificate (`flashledger://node/<id>`), and only a node may speak the
//! internal `Raft` service; `server::raft_service` further checks that the node it names in a
//! message is the certificate's node and a replica of the shard. Clients present a client
//! certificate naming a role (`flashledger://role/<role>/<name>`) or a bearer token from
//! `security.tokens_file`. `security.insecure = true` turns all of it off (plaintext, every
//! caller may do anything), loudly. docs/security.md is the operator's view.

pub mod identity;
#[cfg(not(madsim))]
pub mod layer;
#[cfg(not(madsim))]
pub mod tls;
pub mod tokens;

use std::fmt;

use crate::types::NodeId;

/// What a client may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads and Watch: product pages, dashboards.
    Reader,
    /// Reserve, confirm, cancel, purchase (alone or batched), and everything a reader may.
    BuyerService,
    /// Put SKUs on sale, restock, every cluster operation, and everything a buyer service may.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::BuyerService, Role::Admin];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == text)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::BuyerService => "buyer-service",
            Role::Admin => "admin",
        }
    }

    fn allows(self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Read => true,
            Access::Write => matches!(self, Role::BuyerService | Role::Admin),
            Access::Admin => self == Role::Admin,
            Access::Peer => false,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an RPC needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, authenticated or not: the gRPC health check (load balancers probe it).
    Public,
    /// Any authenticated client.
    Read,
    /// Buyers' writes.
    Write,
    /// Stock administration and cluster operations.
    Admin,
    /// Only another node of the cluster: the internal Raft service.
    Peer,
}

/// Every RPC a node serves and the access it needs; anything else is refused. One table, so
/// a reviewer (and `tests::every_rpc_of_the_proto_is_in_the_table`) can see all of it at once.
pub const RPC_ACCESS: &[(&str, Access)] = &[
    ("/flashledger.v1.Inventory/Reserve", Access::Write),
    ("/flashledger.v1.Inventory/Confirm", Access::Write),
    ("/flashledger.v1.Inventory/Cancel", Access::Write),
    ("/flashledger.v1.Inventory/Purchase", Access::Write),
    ("/flashledger.v1.Inventory/Batch", Access::Write),
    ("/flashledger.v1.Inventory/PutSku", Access::Admin),
    ("/flashledger.v1.Inventory/Restock", Access::Admin),
    ("/flashledger.v1.Inventory/GetStock", Access::Read),
    ("/flashledger.v1.Inventory/Watch", Access::Read),
    ("/flashledger.v1.Cluster/ShardMap", Access::Read),
    ("/flashledger.v1.Cluster/Status", Access::Admin),
    ("/flashledger.v1.Cluster/Backup", Access::Admin),
    ("/flashledger.v1.Cluster/Reshape", Access::Admin),
    ("/flashledger.v1.Raft/AppendEntries", Access::Peer),
    ("/flashledger.v1.Raft/Vote", Access::Peer),
    ("/flashledger.v1.Raft/PreVote", Access::Peer),
    ("/flashledger.v1.Raft/InstallSnapshot", Access::Peer),
    ("/flashledger.v1.Raft/TransferLeader", Access::Peer),
    ("/flashledger.v1.Raft/ProposeShipped", Access::Peer),
    ("/flashledger.v1.Raft/Reconfigure", Access::Peer),
    ("/flashledger.v1.Raft/MetaMap", Access::Peer),
    ("/grpc.health.v1.Health/Check", Access::Public),
    ("/grpc.health.v1.Health/Watch", Access::Public),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Access::Read,
    ),
];

/// The access `path` (`/package.Service/Method`) needs; `None` for an RPC the node does not
/// serve.
pub fn access_of(path: &str) -> Option<Access> {
    RPC_ACCESS
        .iter()
        .find(|(rpc, _)| *rpc == path)
        .map(|(_, access)| *access)
}

/// Who sent a request, as established by the transport. Put in the request's extensions by
/// the layer, so a service can ask who its caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Another node, proven by its certificate.
    Node(NodeId),
    /// A client with a role, proven by a client certificate or a bearer token; `name` says
    /// which certificate or token (for logs).
    Client { role: Role, name: String },
    /// Nobody was asked: the cluster runs with `security.insecure = true`.
    Unchecked,
}

/// Why a request may not proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl Caller {
    /// Whether this caller may make an RPC needing `access`.
    pub fn check(&self, path: &str, access: Access) -> Result<(), Refusal> {
        let allowed = match self {
            Caller::Unchecked => true,
            Caller::Node(_) => access == Access::Peer || access == Access::Public,
            Caller::Client { role, .. } => role.allows(access),
        };
        if allowed {
            return Ok(());
        }
        Err(Refusal::PermissionDenied(match self {
            Caller::Node(id) => format!("{path}: node {id} may only call the internal Raft service"),
            Caller::Client { role, name } => format!("{path} needs {access:?} access; {name} has the role {role}"),
            Caller::Unchecked => unreachable!("an unchecked caller is always allowed"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_proto_is_in_the_table() {
        let proto = include_str!("../../../proto/proto/flashledger.proto");
        let mut service = "";
        let mut rpcs = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or_default();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap_or_default().trim();
                rpcs.push(format!("/flashledger.v1.{service}/{method}"));
            }
        }
        assert_eq!(rpcs.len(), 21, "the proto's RPCs: {rpcs:?}");
        for rpc in &rpcs {
            assert!(access_of(rpc).is_some(), "{rpc} has no access rule");
        }
        assert_eq!(access_of("/flashledger.v1.Inventory/Nope"), None);
    }

    #[test]
    fn roles_allow_what_the_issue_names_and_nothing_more() {
        let client = |role| Caller::Client { role, name: "t".into() };
        let allowed = |caller: &Caller, path: &str| caller.check(path, access_of(path).unwrap()).is_ok();
        let reader = client(Role::Reader);
        let buyer = client(Role::BuyerService);
        let admin = client(Role::Admin);
        let node = Caller::Node(2);
        for (path, access) in RPC_ACCESS {
            let expect = |who: &str| match (who, access) {
                (_, Access::Public) => true,
                ("node", access) => *access == Access::Peer,
                (_, Access::Peer) => false,
                ("reader", access) => *access == Access::Read,
                ("buyer", access) => matches!(access, Access::Read | Access::Write),
                ("admin", _) => true,
                _ => unreachable!(),
            };
            assert_eq!(allowed(&reader, path), expect("reader"), "reader {path}");
            assert_eq!(allowed(&buyer, path), expect("buyer"), "buyer {path}");
            assert_eq!(allowed(&admin, path), expect("admin"), "admin {path}");
            assert_eq!(allowed(&node, path), expect("node"), "node {path}");
            assert!(allowed(&Caller::Unchecked, path));
        }
        assert!(!allowed(&buyer, "/flashledger.v1.Inventory/PutSku"));
        // A backup holds every order of a shard: admins only.
        assert!(!allowed(&reader, "/flashledger.v1.Cluster/Backup"));
        assert!(!allowed(&buyer, "/flashledger.v1.Cluster/Backup"));
        assert!(allowed(&admin, "/flashledger.v1.Cluster/Backup"));
        assert!(!allowed(&admin, "/flashledger.v1.Raft/Vote"));
        assert!(allowed(&reader, "/flashledger.v1.Inventory/GetStock"));
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
