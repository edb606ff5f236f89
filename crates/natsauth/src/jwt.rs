//! NATS JWTs: `base64url(header).base64url(claims).base64url(ed25519 signature)`, header
//! `{"typ":"JWT","alg":"ed25519-nkey"}`, the issuer's nkey public key in `iss` (its prefix says
//! what may issue what: a server `N…` signs authorization requests, an account `A…` signs users
//! and authorization responses), `jti` a hash of the claims, `iat` / `exp` in Unix seconds.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use nkeys::KeyPair;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::AuthError;

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Signs `claims` (a JSON object; `iss`, `iat` and `jti` are set here) with `signer`.
pub fn encode(mut claims: Map<String, Value>, signer: &KeyPair) -> Result<String, AuthError> {
    claims.insert("iss".into(), Value::String(signer.public_key()));
    claims.insert("iat".into(), Value::from(now_secs()));
    claims.remove("jti");
    let unsigned = serde_json::to_vec(&claims).map_err(|e| AuthError::jwt(e.to_string()))?;
    let jti = data_encoding::BASE32_NOPAD.encode(&Sha256::digest(&unsigned));
    claims.insert("jti".into(), Value::String(jti));
    let body = serde_json::to_vec(&claims).map_err(|e| AuthError::jwt(e.to_string()))?;
    let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(body));
    let sig = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| AuthError::Nkey(e.to_string()))?;
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// Decodes `token`, verifies its signature against its own `iss` key, that `iss` is a key of the
/// expected kind (`issuer_prefix`: `'N'` server, `'A'` account) and that it has not expired.
/// Returns the claims.
pub fn decode(token: &str, issuer_prefix: char) -> Result<Map<String, Value>, AuthError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::jwt("not three dot-separated parts"));
    };
    let header: Value = serde_json::from_slice(
        &B64.decode(h)
            .map_err(|e| AuthError::jwt(format!("header: {e}")))?,
    )
    .map_err(|e| AuthError::jwt(format!("header: {e}")))?;
    if header.get("alg").and_then(Value::as_str) != Some("ed25519-nkey") {
        return Err(AuthError::jwt(format!("unsupported header {header}")));
    }
    let claims: Map<String, Value> = serde_json::from_slice(
        &B64.decode(c)
            .map_err(|e| AuthError::jwt(format!("claims: {e}")))?,
    )
    .map_err(|e| AuthError::jwt(format!("claims: {e}")))?;
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::jwt("no iss"))?;
    if !iss.starts_with(issuer_prefix) {
        return Err(AuthError::jwt(format!(
            "issuer {iss} is not a '{issuer_prefix}' key"
        )));
    }
    let key = KeyPair::from_public_key(iss).map_err(|e| AuthError::Nkey(e.to_string()))?;
    let sig = B64
        .decode(s)
        .map_err(|e| AuthError::jwt(format!("signature: {e}")))?;
    key.verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| AuthError::jwt("bad signature"))?;
    if let Some(exp) = claims.get("exp").and_then(Value::as_i64)
        && exp > 0
        && exp < now_secs()
    {
        return Err(AuthError::jwt("expired"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn round_trip_verifies_and_sets_issuer() {
        let kp = KeyPair::new_account();
        let t = encode(
            obj(serde_json::json!({"sub": "x", "nats": {"type": "user"}})),
            &kp,
        )
        .unwrap();
        let c = decode(&t, 'A').unwrap();
        assert_eq!(c["iss"], kp.public_key());
        assert_eq!(c["sub"], "x");
        assert!(c["jti"].as_str().unwrap().len() > 40);
    }

    #[test]
    fn tampered_claims_wrong_kind_and_expired_are_refused() {
        let kp = KeyPair::new_account();
        let t = encode(obj(serde_json::json!({"sub": "x"})), &kp).unwrap();
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(br#"{"sub":"y","iss":"AAAA"}"#);
        parts[1] = &forged;
        assert!(decode(&parts.join("."), 'A').is_err());
        assert!(
            decode(&t, 'N').is_err(),
            "an account key is not a server key"
        );
        let old = encode(obj(serde_json::json!({"sub": "x", "exp": 1})), &kp).unwrap();
        assert!(matches!(decode(&old, 'A'), Err(AuthError::Jwt(m)) if m == "expired"));
        // Signed by another key of the right kind, with the first key's name in iss.
        let other = KeyPair::new_account();
        let t2 = encode(obj(serde_json::json!({"sub": "x"})), &other).unwrap();
        let p2: Vec<&str> = t2.split('.').collect();
        let p1: Vec<&str> = t.split('.').collect();
        assert!(decode(&format!("{}.{}.{}", p1[0], p1[1], p2[2]), 'A').is_err());
    }
}
