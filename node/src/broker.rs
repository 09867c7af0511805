//! How a member logs in to its broker: as upstream's provisioner does, with the user
//! `provisioner` and the broker's provisioning password, over TLS where configured, and in
//! Organization Issuer networks with our caller JWT as the connection's token.
//!
//! A Choria Broker with issuers refuses the `provisioner` user unless its token is a client
//! JWT signed by one of its issuers with the `provisioner` permission (go-choria
//! `broker/network/choria_auth.go`); without one the broker needs `provisioner_without_token`.
//! The JWT is [`CallerSigner`]'s, minted again at each connect, so a reconnect a day later
//! presents an unexpired one. The broker checks no nonce signature for this user, so none is
//! sent (async-nats signs nonces only with its `nkeys` feature, a second ed25519 stack).

use std::sync::Arc;

use async_nats::{Auth, ConnectOptions};
use proto::v2::Signer as _;

use crate::caller::CallerSigner;
use crate::config::Config;

/// The credentials of one connect: user and password, and the caller JWT when there is one.
pub fn auth(user: &str, password: &str, caller: Option<&CallerSigner>) -> Auth {
    let mut auth = Auth::new();
    auth.username = Some(user.to_string());
    auth.password = Some(password.to_string());
    auth.token = caller.map(|c| c.caller_jwt());
    auth
}

/// Connect options for the member's broker connection.
pub fn connect_options(config: &Config, caller: Option<Arc<CallerSigner>>) -> ConnectOptions {
    let user = config.nats.user.clone();
    let password = config.broker_provisioning_password.clone();
    let opts = match caller {
        Some(caller) => ConnectOptions::with_auth_callback(move |_nonce| {
            let auth = auth(&user, &password, Some(&caller));
            async move { Ok(auth) }
        }),
        None => ConnectOptions::with_user_and_password(user, password),
    }
    .name(format!("provisioner {}", config.identity));
    match &config.nats.tls {
        Some(tls) => tls.apply(opts),
        None => opts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orgissuer::{ClientClaims, OrgIssuer};

    #[test]
    fn without_an_issuer_the_login_is_user_and_password() {
        let a = auth("provisioner", "s3cret", None);
        assert_eq!(a.username.as_deref(), Some("provisioner"));
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        assert_eq!(a.token, None);
        assert_eq!(a.jwt, None);
    }

    #[test]
    fn with_an_issuer_the_token_is_a_provisioner_client_jwt_the_issuer_signed() {
        let issuer = Arc::new(OrgIssuer::from_seed(&[7u8; 32]).unwrap());
        let caller = CallerSigner::new(issuer.clone(), "choria=prov").unwrap();
        let a = auth("provisioner", "s3cret", Some(&caller));
        assert_eq!(a.username.as_deref(), Some("provisioner"));
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        let token = a.token.unwrap();

        // what the broker checks: signed by the issuer, a client id, allowed to provision
        let pem = issuer.public_pem().unwrap();
        let key = jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.validate_aud = false;
        let claims = jsonwebtoken::decode::<ClientClaims>(&token, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims.purpose, "choria_client_id");
        assert_eq!(claims.callerid, "choria=prov");
        assert!(claims.permissions.provisioner);
        assert_eq!(claims.public_key.len(), 64);

        // a JWT from another issuer does not verify with this one's key
        let other = OrgIssuer::from_seed(&[8u8; 32]).unwrap();
        let forged = CallerSigner::new(Arc::new(other), "choria=prov").unwrap();
        let forged = auth("provisioner", "s3cret", Some(&forged)).token.unwrap();
        assert!(jsonwebtoken::decode::<ClientClaims>(&forged, &key, &v).is_err());
    }
}
