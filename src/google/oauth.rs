//! Service-account credentials for Google APIs: the OAuth 2.0 JWT bearer
//! grant (RFC 7523), as Google's own client libraries use it.
//!
//! 1. The service-account JSON (a Worker secret) names the account
//!    (`client_email`), its RSA key (`private_key`, PKCS #8 PEM) and the token
//!    endpoint (`token_uri`) — [`ServiceAccount`].
//! 2. A JWT is signed with that key, RS256: header `{alg, typ, kid}`, claims
//!    `iss` (the account), `scope` ([`SCOPE`]), `aud` (the token endpoint),
//!    `iat`, `exp` (an hour later) — [`jwt_signing_input`], then the runtime's
//!    WebCrypto signs ([`crate::http::Upstream::sign_rs256`]) and [`jwt`]
//!    joins the parts.
//! 3. The JWT is exchanged at the token endpoint (`grant_type=`[`GRANT_TYPE`])
//!    for an access token, through the same [`Upstream`] as model requests
//!    (so the mock provider stands in for Google in tests) —
//!    [`token_request`], [`token_from_response`].
//! 4. The token is kept per isolate until [`REFRESH_BEFORE_EXPIRY_S`] before
//!    it expires ([`TokenCache`]): one exchange an hour per isolate and
//!    account, not one per request.
//!
//! [`access_token`] runs the whole flow.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{base64_decode, base64url};
use crate::error::GatewayError;
use crate::http::{Upstream, UpstreamRequest};
use crate::providers::fnv1a;

/// The scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, when the service account names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The grant type of a JWT exchanged for an access token (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The longest a JWT may live for Google's token endpoint.
const JWT_LIFETIME_S: u64 = 3600;
/// A cached token is replaced this long before it expires, so a request
/// never carries a token that lapses on the way (Google's libraries refresh
/// a few minutes early too).
pub const REFRESH_BEFORE_EXPIRY_S: u64 = 300;
/// The largest token endpoint answer read.
const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// The fields of a service-account key file the flow uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    /// The account's e-mail: the JWT's issuer.
    pub client_email: String,
    /// Its RSA private key, PKCS #8 PEM.
    pub private_key: String,
    /// The key's id: the JWT header's `kid`.
    #[serde(default)]
    pub private_key_id: Option<String>,
    /// The token endpoint.
    #[serde(default)]
    pub token_uri: Option<String>,
}

impl ServiceAccount {
    /// Parses a service-account key file. The error never quotes the text
    /// (it holds a private key).
    pub fn parse(json: &str) -> Result<ServiceAccount, String> {
        let sa: ServiceAccount = serde_json::from_str(json).map_err(|e| {
            format!(
                "not a service-account key file (line {}, column {}: {})",
                e.line(),
                e.column(),
                match e.classify() {
                    serde_json::error::Category::Data => "a field is missing or mistyped",
                    _ => "invalid JSON",
                }
            )
        })?;
        if sa.client_email.trim().is_empty() {
            return Err("the service account has no client_email".into());
        }
        Ok(sa)
    }

    /// Where tokens are issued.
    pub fn token_uri(&self) -> &str {
        self.token_uri
            .as_deref()
            .filter(|u| !u.is_empty())
            .unwrap_or(DEFAULT_TOKEN_URI)
    }

    /// The private key's DER bytes (PKCS #8), what WebCrypto imports.
    pub fn private_key_der(&self) -> Result<Vec<u8>, String> {
        const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
        const END: &str = "-----END PRIVATE KEY-----";
        let pem = self.private_key.as_str();
        if pem.contains("BEGIN RSA PRIVATE KEY") {
            return Err("the private key is PKCS #1 (BEGIN RSA PRIVATE KEY); service-account keys are PKCS #8 (BEGIN PRIVATE KEY): convert it with `openssl pkcs8 -topk8 -nocrypt`".into());
        }
        let start = pem
            .find(BEGIN)
            .ok_or("the private key is not a PEM `PRIVATE KEY`")?
            + BEGIN.len();
        let end = pem[start..]
            .find(END)
            .ok_or("the private key's PEM has no END line")?
            + start;
        match base64_decode(&pem[start..end]) {
            Some(der) if !der.is_empty() => Ok(der),
            _ => Err("the private key's PEM body is not base64".into()),
        }
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

/// The claims of the JWT exchanged for a token.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The service account.
    pub iss: String,
    /// What the token may do.
    pub scope: String,
    /// The token endpoint.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
}

/// `base64url(header) . base64url(claims)`: the bytes RS256 signs, for a
/// JWT issued at `now_s`.
pub fn jwt_signing_input(sa: &ServiceAccount, now_s: u64) -> String {
    let header = Header {
        alg: "RS256",
        typ: "JWT",
        kid: sa.private_key_id.as_deref().filter(|k| !k.is_empty()),
    };
    let claims = Claims {
        iss: sa.client_email.clone(),
        scope: SCOPE.to_owned(),
        aud: sa.token_uri().to_owned(),
        iat: now_s,
        exp: now_s + JWT_LIFETIME_S,
    };
    // Plain structs of strings and numbers always serialize.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(&claims).unwrap_or_default();
    format!("{}.{}", base64url(&header), base64url(&claims))
}

/// The complete JWT: the signing input and its signature.
pub fn jwt(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", base64url(signature))
}

/// The token exchange: a form POST of the grant type and the JWT.
pub fn token_request(sa: &ServiceAccount, jwt: &str) -> UpstreamRequest {
    // A JWT is base64url and dots: nothing in it needs escaping in a form.
    let body =
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
    UpstreamRequest {
        method: "POST",
        url: sa.token_uri().to_owned(),
        headers: vec![
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("accept".to_owned(), "application/json".to_owned()),
        ],
        body: body.into_bytes(),
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenError {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// Reads the token endpoint's answer: the access token and its lifetime in
/// seconds (an hour when it says none), or a message saying why not.
pub fn token_from_response(status: u16, body: &[u8]) -> Result<(String, u64), String> {
    if (200..300).contains(&status) {
        let answer: TokenAnswer = serde_json::from_slice(body)
            .map_err(|e| format!("the token endpoint's answer is not a token: {e}"))?;
        if answer.access_token.is_empty() {
            return Err("the token endpoint answered an empty token".into());
        }
        return Ok((answer.access_token, answer.expires_in.unwrap_or(3600)));
    }
    let detail = serde_json::from_slice::<TokenError>(body)
        .ok()
        .map(|e| match (e.error, e.error_description) {
            (Some(e), Some(d)) => format!("{e}: {d}"),
            (Some(e), None) => e,
            (None, Some(d)) => d,
            (None, None) => String::new(),
        })
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| crate::providers::excerpt(body));
    Err(format!("the token endpoint answered {status}: {detail}"))
}

/// A token and when it expires.
#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    expires_at_s: u64,
}

/// Access tokens by service account, each used until
/// [`REFRESH_BEFORE_EXPIRY_S`] before it expires.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<u64, CachedToken>,
}

impl TokenCache {
    /// The account's token, if it is good for a while yet at `now_s`.
    pub fn get(&self, account: u64, now_s: u64) -> Option<&str> {
        self.tokens
            .get(&account)
            .filter(|t| now_s + REFRESH_BEFORE_EXPIRY_S < t.expires_at_s)
            .map(|t| t.token.as_str())
    }

    /// Keeps a token issued at `now_s` for `expires_in_s` seconds.
    pub fn insert(&mut self, account: u64, token: String, now_s: u64, expires_in_s: u64) {
        let expires_at_s = now_s.saturating_add(expires_in_s);
        self.tokens.insert(
            account,
            CachedToken {
                token,
                expires_at_s,
            },
        );
    }
}

/// The cache key of a service-account key file: its hash, so a cached
/// token is found without parsing the file (a rotated key is a new entry).
pub fn account_key(service_account_json: &str) -> u64 {
    fnv1a(service_account_json.as_bytes())
}

thread_local! {
    /// This isolate's tokens. Per isolate is the cache the design wants: a
    /// thread-local is exactly that on Workers (and one per test thread
    /// natively, which keeps tests apart).
    static TOKENS: RefCell<TokenCache> = RefCell::new(TokenCache::default());
}

/// The service account's access token if this isolate holds one good at
/// `now_s`: no I/O, no parsing (the key file's hash finds it).
pub fn cached_token(service_account_json: &str, now_s: u64) -> Option<String> {
    let account = account_key(service_account_json);
    TOKENS.with_borrow(|c| c.get(account, now_s).map(str::to_owned))
}

/// An access token for the service account in `service_account_json`, from
/// this isolate's cache or freshly exchanged through `upstream` at `now_s`.
/// Failures are the provider's: a bad key file or a refused JWT is a 401
/// (`upstream_auth_failed`, not the caller's fault, not worth a retry); a
/// token endpoint that is down or limiting keeps its status (worth another
/// target).
pub async fn access_token<U: Upstream>(
    upstream: &U,
    provider: &str,
    service_account_json: &str,
    now_s: u64,
) -> Result<String, GatewayError> {
    if let Some(token) = cached_token(service_account_json, now_s) {
        return Ok(token);
    }
    let account = account_key(service_account_json);
    let refused = |message: String| GatewayError::Upstream {
        provider: provider.to_owned(),
        status: 401,
        message: format!("Google service account: {message}"),
        retry_after: None,
    };
    let sa = ServiceAccount::parse(service_account_json).map_err(refused)?;
    let der = sa.private_key_der().map_err(refused)?;
    let input = jwt_signing_input(&sa, now_s);
    let signature = upstream
        .sign_rs256(&der, input.as_bytes())
        .await
        .map_err(|e| refused(format!("signing the JWT failed: {e}")))?;
    let request = token_request(&sa, &jwt(&input, &signature));
    let response =
        upstream
            .send(request)
            .await
            .map_err(|message| GatewayError::UpstreamUnreachable {
                provider: provider.to_owned(),
                message: format!("token endpoint: {message}"),
            })?;
    let (status, retry_after) = (response.status, response.retry_after_secs());
    let body = response
        .collect(TOKEN_BODY_LIMIT)
        .await
        .map_err(|message| GatewayError::UpstreamUnreachable {
            provider: provider.to_owned(),
            message: format!("token endpoint: {message}"),
        })?;
    match token_from_response(status, &body) {
        Ok((token, expires_in)) => {
            TOKENS.with_borrow_mut(|c| c.insert(account, token.clone(), now_s, expires_in));
            Ok(token)
        }
        Err(message) if crate::error::is_retryable_status(status) => Err(GatewayError::Upstream {
            provider: provider.to_owned(),
            status,
            message: format!("Google token endpoint: {message}"),
            retry_after,
        }),
        Err(message) => Err(refused(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service account whose key is not a real RSA key (signing is the
    /// runtime's; these tests check everything around it).
    const ACCOUNT: &str = r#"{
      "type": "service_account",
      "project_id": "demo-project",
      "private_key_id": "key-1",
      "private_key": "-----BEGIN PRIVATE KEY-----\nAAECAwQF\nBgcICQ==\n-----END PRIVATE KEY-----\n",
      "client_email": "gateway@demo-project.iam.gserviceaccount.com",
      "token_uri": "https://oauth2.example/token"
    }"#;

    fn decode_part(part: &str) -> serde_json::Value {
        let mut b64 = part.replace('-', "+").replace('_', "/");
        while !b64.len().is_multiple_of(4) {
            b64.push('=');
        }
        serde_json::from_slice(&base64_decode(&b64).unwrap()).unwrap()
    }

    #[test]
    fn jwt_carries_the_claims_google_requires() {
        let sa = ServiceAccount::parse(ACCOUNT).unwrap();
        let input = jwt_signing_input(&sa, 1_700_000_000);
        let (header, claims) = input.split_once('.').unwrap();
        assert_eq!(
            decode_part(header),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "key-1"})
        );
        assert_eq!(
            decode_part(claims),
            serde_json::json!({
                "iss": "gateway@demo-project.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/cloud-platform",
                "aud": "https://oauth2.example/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        assert!(!input.contains('='), "no padding");
        let token = jwt(&input, &[0xfb, 0xff, 0x00]);
        assert_eq!(token, format!("{input}.-_8A"));
    }

    #[test]
    fn the_token_request_is_a_form_post_of_the_jwt_grant() {
        let sa = ServiceAccount::parse(ACCOUNT).unwrap();
        let req = token_request(&sa, "h.c.s");
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "https://oauth2.example/token");
        let body = String::from_utf8(req.body).unwrap();
        let form: HashMap<String, String> = body
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.replace("%3A", ":"))
            })
            .collect();
        assert_eq!(form["grant_type"], GRANT_TYPE);
        assert_eq!(form["assertion"], "h.c.s");
        assert!(req.headers.contains(&(
            "content-type".into(),
            "application/x-www-form-urlencoded".into()
        )));
    }

    #[test]
    fn key_files_are_read_and_bad_ones_explained_without_quoting_them() {
        let sa = ServiceAccount::parse(ACCOUNT).unwrap();
        assert_eq!(sa.private_key_der().unwrap(), (0u8..10).collect::<Vec<_>>());
        let no_uri = ServiceAccount::parse(
            r#"{"client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----"}"#,
        )
        .unwrap();
        assert_eq!(no_uri.token_uri(), DEFAULT_TOKEN_URI);
        let e =
            ServiceAccount::parse(r#"{"client_email":"a@b","private_key":"SECRET"#).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(ServiceAccount::parse(r#"{"private_key":"x"}"#).is_err());
        let pkcs1 = ServiceAccount {
            private_key: "-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----"
                .into(),
            ..sa.clone()
        };
        assert!(pkcs1.private_key_der().unwrap_err().contains("PKCS #1"));
        let not_pem = ServiceAccount {
            private_key: "AAAA".into(),
            ..sa
        };
        assert!(not_pem.private_key_der().is_err());
    }

    #[test]
    fn token_answers_and_refusals_are_read() {
        assert_eq!(
            token_from_response(
                200,
                br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#
            ),
            Ok(("ya29.x".to_owned(), 3599))
        );
        assert_eq!(
            token_from_response(200, br#"{"access_token":"t"}"#),
            Ok(("t".to_owned(), 3600))
        );
        assert!(token_from_response(200, b"{}").is_err());
        assert_eq!(
            token_from_response(
                400,
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            ),
            Err(
                "the token endpoint answered 400: invalid_grant: Invalid JWT Signature.".to_owned()
            )
        );
        assert_eq!(
            token_from_response(503, b"upstream down"),
            Err("the token endpoint answered 503: upstream down".to_owned())
        );
    }

    #[test]
    fn cached_tokens_are_used_until_shortly_before_they_expire() {
        let mut cache = TokenCache::default();
        let a = account_key(ACCOUNT);
        assert_eq!(cache.get(a, 1_000), None);
        cache.insert(a, "t1".into(), 1_000, 3_600);
        assert_eq!(cache.get(a, 1_000), Some("t1"));
        let refresh_at = 1_000 + 3_600 - REFRESH_BEFORE_EXPIRY_S;
        assert_eq!(cache.get(a, refresh_at - 1), Some("t1"));
        assert_eq!(cache.get(a, refresh_at), None, "renewed before it lapses");
        assert_eq!(cache.get(account_key("{}"), 1_000), None, "per account");
        cache.insert(a, "t2".into(), refresh_at, 3_600);
        assert_eq!(cache.get(a, refresh_at), Some("t2"));
    }
}
