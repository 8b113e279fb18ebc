//! How one instance proves to another that it is one of them: the request carries its instance
//! id, an expiry a minute ahead, and an HMAC-SHA256 of (method, path, instance, expiry) under a
//! sub-key of the secret key every instance shares (decision 52). Pure, so every refusal
//! has a unit test.

use inventory::SecretBox;

/// The header naming the requesting instance.
pub const PEER_HEADER: &str = "x-rackshare-peer";
/// The header with the request's expiry (unix ms).
pub const EXPIRES_HEADER: &str = "x-rackshare-peer-expires";
/// The header with the signature (hex).
pub const SIGNATURE_HEADER: &str = "x-rackshare-peer-signature";

/// How long a signed request stays valid (clocks of instances are NTP-synced; a minute covers
/// their skew and a slow connect, and bounds a replay to that minute).
pub const VALID_FOR_MS: i64 = 60_000;

/// The text a signature covers.
fn canonical(method: &str, path: &str, instance: &str, expires_ms: i64) -> String {
    format!("{method}|{path}|{instance}|{expires_ms}")
}

/// The three headers of a request by `instance` for `path`, signed at `now_ms`.
pub fn sign(
    secrets: &SecretBox,
    method: &str,
    path: &str,
    instance: &str,
    now_ms: i64,
) -> [(&'static str, String); 3] {
    let expires = now_ms + VALID_FOR_MS;
    let signature = secrets.peer_request_signature(&canonical(method, path, instance, expires));
    [
        (PEER_HEADER, instance.to_string()),
        (EXPIRES_HEADER, expires.to_string()),
        (SIGNATURE_HEADER, signature),
    ]
}

/// Why a peer request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A header is missing or unreadable.
    #[error("the request is not signed by an instance (missing or malformed {0})")]
    Unsigned(&'static str),
    /// The expiry has passed, or is further ahead than a signer would put it.
    #[error("the signed request expired or is dated too far ahead")]
    Expired,
    /// The signature is not the shared key's.
    #[error("the request's signature is not one an instance made")]
    Forged,
}

/// Checks a request's headers (`get` reads one by name) for `method` and `path` at `now_ms`;
/// returns the signing instance's id.
pub fn verify<'a>(
    secrets: &SecretBox,
    method: &str,
    path: &str,
    now_ms: i64,
    get: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, Refusal> {
    let instance = get(PEER_HEADER)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or(Refusal::Unsigned(PEER_HEADER))?;
    let expires: i64 = get(EXPIRES_HEADER)
        .and_then(|s| s.parse().ok())
        .ok_or(Refusal::Unsigned(EXPIRES_HEADER))?;
    let signature = get(SIGNATURE_HEADER).ok_or(Refusal::Unsigned(SIGNATURE_HEADER))?;
    if expires < now_ms || expires > now_ms + 2 * VALID_FOR_MS {
        return Err(Refusal::Expired);
    }
    if !secrets.verify_peer_request(&canonical(method, path, instance, expires), signature) {
        return Err(Refusal::Forged);
    }
    Ok(instance.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_signed_request_passes_and_every_forgery_is_refused() {
        let ours = SecretBox::from_key([7; 32]);
        let theirs = SecretBox::from_key([8; 32]);
        let path = "/api/v1/peer/blobs/ab";
        let h = sign(&ours, "GET", path, "b-1", 1_000);
        assert_eq!(
            verify(&ours, "GET", path, 1_500, |n| header(&h, n)),
            Ok("b-1".into())
        );
        // Another key, another path, another method, another instance name: forged.
        assert_eq!(
            verify(&theirs, "GET", path, 1_500, |n| header(&h, n)),
            Err(Refusal::Forged)
        );
        assert_eq!(
            verify(&ours, "GET", "/api/v1/peer/blobs/cd", 1_500, |n| header(
                &h, n
            )),
            Err(Refusal::Forged)
        );
        assert_eq!(
            verify(&ours, "POST", path, 1_500, |n| header(&h, n)),
            Err(Refusal::Forged)
        );
        let mut renamed = h.clone();
        renamed[0].1 = "a-1".into();
        assert_eq!(
            verify(&ours, "GET", path, 1_500, |n| header(&renamed, n)),
            Err(Refusal::Forged)
        );
        // Expired, and dated too far ahead.
        assert_eq!(
            verify(&ours, "GET", path, 1_000 + VALID_FOR_MS + 1, |n| header(
                &h, n
            )),
            Err(Refusal::Expired)
        );
        let ahead = sign(&ours, "GET", path, "b-1", 10 * VALID_FOR_MS);
        assert_eq!(
            verify(&ours, "GET", path, 0, |n| header(&ahead, n)),
            Err(Refusal::Expired)
        );
        // Unsigned.
        assert_eq!(
            verify(&ours, "GET", path, 1_500, |n| header(&h[..1], n)),
            Err(Refusal::Unsigned(EXPIRES_HEADER))
        );
        assert_eq!(
            verify(&ours, "GET", path, 1_500, |_| None),
            Err(Refusal::Unsigned(PEER_HEADER))
        );
    }
}
