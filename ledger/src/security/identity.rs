//! Identity from a certificate the TLS handshake already verified against the cluster's CA:
//! nodes are named `flashledger://node/<id>`, clients `flashledger://role/<role>/<name>`, as
//! URI subject alternative names (scripts/certs.sh issues both kinds).

use super::Caller;
use super::Role;
use crate::types::NodeId;

const NODE_PREFIX: &str = "flashledger://node/";
const ROLE_PREFIX: &str = "flashledger://role/";

/// The caller a certificate (DER) names, or why it names none. A certificate naming more
/// than one identity is refused: which would it be?
pub fn caller_of_certificate(der: &[u8]) -> Result<Caller, String> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| format!("unreadable certificate: {e:?}"))?;
    let names: Vec<&str> = cert
        .valid_uri_names()
        .filter(|uri| uri.starts_with("flashledger://"))
        .collect();
    match names.as_slice() {
        [name] => caller_of_name(name),
        [] => Err(
            "the certificate names no flashledger identity (flashledger://node/<id> or \
                   flashledger://role/<role>/<name>)"
                .into(),
        ),
        _ => Err(format!("the certificate names more than one identity: {names:?}")),
    }
}

/// Parses one `flashledger://` identity URI.
pub fn caller_of_name(name: &str) -> Result<Caller, String> {
    if let Some(id) = name.strip_prefix(NODE_PREFIX) {
        return match id.parse::<NodeId>() {
            Ok(id) if id > 0 => Ok(Caller::Node(id)),
            _ => Err(format!("{name}: not a node id")),
        };
    }
    if let Some(rest) = name.strip_prefix(ROLE_PREFIX) {
        let (role, who) = rest.split_once('/').unwrap_or((rest, ""));
        let role = Role::parse(role).ok_or_else(|| format!("{name}: unknown role {role:?}"))?;
        let who = if who.is_empty() { "client certificate" } else { who };
        return Ok(Caller::Client {
            role,
            name: who.to_string(),
        });
    }
    Err(format!("{name}: not a flashledger identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_callers() {
        assert_eq!(caller_of_name("flashledger://node/3"), Ok(Caller::Node(3)));
        assert_eq!(
            caller_of_name("flashledger://role/admin/ops"),
            Ok(Caller::Client {
                role: Role::Admin,
                name: "ops".into()
            })
        );
        assert!(matches!(
            caller_of_name("flashledger://role/buyer-service"),
            Ok(Caller::Client {
                role: Role::BuyerService,
                ..
            })
        ));
        for bad in [
            "flashledger://node/0",
            "flashledger://node/x",
            "flashledger://node/",
            "flashledger://role/root/x",
            "flashledger://other/1",
        ] {
            assert!(caller_of_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(caller_of_certificate(b"not a certificate").is_err());
        assert!(caller_of_certificate(&[]).is_err());
    }
}
