//! [`Credentials`]: what a client proves itself with to a secured cluster — the cluster's CA
//! (to verify the nodes; its presence means TLS), optionally a client certificate naming a
//! role, and optionally a bearer token sent on every call. An insecure cluster (plaintext, no
//! authentication) takes the default: nothing.

use std::fmt;

/// TLS material and a bearer token, as PEM bytes and text (reading files is the caller's
/// business; `ledger`'s CLI takes them from flags, environment variables or files).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// PEM of the CA that signed the nodes' certificates. `Some` means every connection is TLS
    /// (`https://`); `None` means plaintext.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate (PEM) and its private key (PEM); its URI name
    /// `flashledger://role/<role>/<name>` gives the role.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// Sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
}

impl fmt::Debug for Credentials {
    /// Never prints the token or the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("tls", &self.ca_pem.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Adds the bearer token to every request of a channel.
#[derive(Clone)]
pub struct AddToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl AddToken {
    pub(crate) fn new(token: Option<&str>) -> Result<Self, String> {
        token
            .map(|token| {
                let token = token.trim();
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err("the token must be printable ASCII without spaces".to_string());
                }
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the token is not printable ASCII".to_string())
            })
            .transpose()
            .map(AddToken)
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secrets() {
        let credentials = Credentials {
            ca_pem: Some(b"ca".to_vec()),
            client_cert: Some((b"cert".to_vec(), b"secret-key".to_vec())),
            token: Some("secret-token".into()),
        };
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn a_token_that_is_not_ascii_is_refused() {
        assert!(AddToken::new(Some("tök\n")).is_err());
        assert!(AddToken::new(Some("abc")).is_ok());
        assert!(AddToken::new(None).is_ok());
    }
}
