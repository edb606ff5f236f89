//! The auth callout's messages (pure).
//!
//! The server publishes an *authorization request* JWT (signed by the server's own `N…` key) on
//! `$SYS.REQ.USER.AUTH` in the callout account, with the connection's CONNECT options and a
//! fresh user nkey it generated for this connection. The callout replies with an *authorization
//! response* JWT signed by the issuer account key the server is configured with (`aud` = the
//! server's id, `sub` = that user nkey) that holds either a user JWT — placed in account `aud`
//! of the user JWT, with its permissions, limits and expiry — or an error string.

use nkeys::KeyPair;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{AuthError, jwt};

/// The subject the server sends authorization requests on.
pub const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServerId {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClientInfo {
    /// The remote address as the server sees it.
    #[serde(default)]
    pub host: String,
    /// The server's connection id (cid): what `KICK` takes.
    #[serde(default)]
    pub id: u64,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Default, Deserialize)]
pub struct ConnectOpts {
    #[serde(default)]
    pub auth_token: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub pass: String,
    #[serde(default)]
    pub name: String,
}

impl std::fmt::Debug for ConnectOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a credential.
        f.debug_struct("ConnectOpts")
            .field(
                "auth_token",
                &(!self.auth_token.is_empty()).then_some("<redacted>"),
            )
            .field("user", &self.user)
            .field("name", &self.name)
            .finish()
    }
}

/// What the server tells the callout about a connection.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub server: ServerId,
    /// The user nkey the response must be for.
    pub user_nkey: String,
    pub client: ClientInfo,
    pub connect: ConnectOpts,
}

#[derive(Deserialize)]
struct RequestNats {
    server_id: ServerId,
    user_nkey: String,
    #[serde(default)]
    client_info: ClientInfo,
    #[serde(default)]
    connect_opts: ConnectOpts,
}

/// Decodes and verifies an authorization request (signed by a server key, not expired).
pub fn decode_request(token: &[u8]) -> Result<AuthRequest, AuthError> {
    let token =
        std::str::from_utf8(token).map_err(|_| AuthError::Jwt("request is not UTF-8".into()))?;
    let claims = jwt::decode(token, 'N')?;
    let nats = claims
        .get("nats")
        .cloned()
        .ok_or_else(|| AuthError::Jwt("request has no nats claims".into()))?;
    // `authorization_request` (nats-server 2.10.x wrote `authorization`).
    match nats.get("type").and_then(Value::as_str) {
        Some("authorization_request" | "authorization") => {}
        other => {
            return Err(AuthError::Jwt(format!(
                "not an authorization request (type {other:?})"
            )));
        }
    }
    let r: RequestNats =
        serde_json::from_value(nats).map_err(|e| AuthError::Jwt(format!("request: {e}")))?;
    if !r.user_nkey.starts_with('U') {
        return Err(AuthError::Jwt(format!(
            "user nkey {} is not a user key",
            r.user_nkey
        )));
    }
    Ok(AuthRequest {
        server: r.server_id,
        user_nkey: r.user_nkey,
        client: r.client_info,
        connect: r.connect_opts,
    })
}

/// What a connection may do: the subjects it may publish to and subscribe to (everything else
/// is denied by the server), bounds, and when the grant ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Shown by the server as the connection's user (`node-<id>`).
    pub name: String,
    /// The account the connection is placed in.
    pub account: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Unix seconds; the server closes the connection then (the client reconnects and is asked
    /// for again).
    pub expires_at: i64,
    pub max_subscriptions: i64,
    pub max_payload: i64,
}

/// The user JWT for `grant`, for the connection `user_nkey`, signed by `issuer`.
pub fn user_jwt(issuer: &KeyPair, user_nkey: &str, grant: &Grant) -> Result<String, AuthError> {
    let claims = json!({
        "sub": user_nkey,
        "aud": grant.account,
        "name": grant.name,
        "exp": grant.expires_at,
        "nats": {
            "pub": {"allow": grant.publish},
            "sub": {"allow": grant.subscribe},
            "subs": grant.max_subscriptions,
            "data": -1,
            "payload": grant.max_payload,
            "type": "user",
            "version": 2,
        }
    });
    jwt::encode(object(claims), issuer)
}

/// The signed response to `request`: the grant's user JWT, or the refusal `Err(reason)` (the
/// server logs the reason and closes the connection with "Authorization Violation").
pub fn respond(
    issuer: &KeyPair,
    request: &AuthRequest,
    outcome: Result<&Grant, &str>,
) -> Result<String, AuthError> {
    let nats = match outcome {
        Ok(grant) => json!({
            "jwt": user_jwt(issuer, &request.user_nkey, grant)?,
            "type": "authorization_response",
            "version": 2,
        }),
        Err(reason) => json!({
            "error": reason,
            "type": "authorization_response",
            "version": 2,
        }),
    };
    let claims = json!({
        "sub": request.user_nkey,
        "aud": request.server.id,
        "nats": nats,
    });
    jwt::encode(object(claims), issuer)
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(server: &KeyPair, user: &KeyPair, token: &str) -> String {
        let claims = json!({
            "sub": "AISSUER",
            "aud": "nats-authorization-request",
            "exp": 4_000_000_000i64,
            "nats": {
                "server_id": {"id": server.public_key(), "name": "t"},
                "user_nkey": user.public_key(),
                "client_info": {"host": "127.0.0.1", "id": 7},
                "connect_opts": {"auth_token": token, "protocol": 1},
                "type": "authorization",
                "version": 2,
            }
        });
        jwt::encode(object(claims), server).unwrap()
    }

    #[test]
    fn request_decodes_and_response_carries_the_grant() {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user();
        let issuer = KeyPair::new_account();
        let r = decode_request(request(&server, &user, "gbn_x").as_bytes()).unwrap();
        assert_eq!(r.connect.auth_token, "gbn_x");
        assert_eq!(r.client.id, 7);
        assert!(
            !format!("{r:?}").contains("gbn_x"),
            "Debug never prints the credential"
        );
        let grant = Grant {
            name: "node-1".into(),
            account: "GRIDBOOK".into(),
            publish: vec!["node.1.result".into()],
            subscribe: vec!["node.1.>".into()],
            expires_at: 4_000_000_000,
            max_subscriptions: 16,
            max_payload: 1 << 20,
        };
        let resp = respond(&issuer, &r, Ok(&grant)).unwrap();
        let c = jwt::decode(&resp, 'A').unwrap();
        assert_eq!(c["sub"], user.public_key());
        assert_eq!(c["aud"], server.public_key());
        assert_eq!(c["nats"]["type"], "authorization_response");
        let u = jwt::decode(c["nats"]["jwt"].as_str().unwrap(), 'A').unwrap();
        assert_eq!(u["aud"], "GRIDBOOK");
        assert_eq!(u["sub"], user.public_key());
        assert_eq!(u["nats"]["pub"]["allow"], json!(["node.1.result"]));
        assert_eq!(u["nats"]["sub"]["allow"], json!(["node.1.>"]));
        let refused = respond(&issuer, &r, Err("unknown credential")).unwrap();
        let c = jwt::decode(&refused, 'A').unwrap();
        assert_eq!(c["nats"]["error"], "unknown credential");
        assert!(c["nats"].get("jwt").is_none());
    }

    #[test]
    fn a_request_not_signed_by_a_server_is_refused() {
        let not_a_server = KeyPair::new_account();
        let user = KeyPair::new_user();
        assert!(decode_request(request(&not_a_server, &user, "t").as_bytes()).is_err());
    }
}
