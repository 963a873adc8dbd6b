//! CORS for browsers: a bucket's rules (PutBucketCors) are kept as JSON in
//! its directory's `user.s3.cors` xattr. A preflight `OPTIONS` is answered
//! here, before s3s (which does not route it), from the first rule that
//! allows the origin, the method and every requested header, or refused
//! with 403 as S3 refuses it; an actual request from a browser (with an
//! `Origin`) gets the allowing headers added to its response. Requests
//! without an `Origin` cost nothing here.

use serde::{Deserialize, Serialize};

/// S3's limit on rules per bucket.
pub const RULES_MAX: usize = 100;
const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "HEAD"];

/// One CORS rule, as PutBucketCors gives it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<i32>,
}

/// Refuses what S3 refuses: no rules, too many, a rule without origins or
/// methods, a method other than GET, PUT, POST, DELETE and HEAD, or more
/// than one `*` in an origin or header pattern.
pub fn check(rules: &[Rule]) -> Result<(), String> {
    if rules.is_empty() || rules.len() > RULES_MAX {
        return Err(format!(
            "a CORS configuration holds 1 to {RULES_MAX} rules, not {}",
            rules.len()
        ));
    }
    for rule in rules {
        if rule.origins.is_empty() || rule.methods.is_empty() {
            return Err(
                "every CORS rule names at least one AllowedOrigin and one AllowedMethod".into(),
            );
        }
        if let Some(method) = rule.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            return Err(format!(
                "AllowedMethod {method:?}: only GET, PUT, POST, DELETE and HEAD"
            ));
        }
        if let Some(pattern) = rule
            .origins
            .iter()
            .chain(&rule.headers)
            .find(|p| p.matches('*').count() > 1)
        {
            return Err(format!("{pattern:?} holds more than one '*' wildcard"));
        }
    }
    Ok(())
}

pub fn encode(rules: &[Rule]) -> Vec<u8> {
    serde_json::to_vec(rules).unwrap_or_default()
}

pub fn decode(value: &[u8]) -> Option<Vec<Rule>> {
    serde_json::from_slice(value).ok()
}

/// `pattern` with at most one `*` standing for any run of characters.
fn matches(pattern: &str, text: &str, fold_case: bool) -> bool {
    let (pattern, text) = if fold_case {
        (pattern.to_ascii_lowercase(), text.to_ascii_lowercase())
    } else {
        (pattern.to_string(), text.to_string())
    };
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.len() >= head.len() + tail.len() && text.starts_with(head) && text.ends_with(tail)
        }
    }
}

/// What a matching rule grants, as response headers.
#[derive(Debug, PartialEq)]
pub struct Grant {
    pub headers: Vec<(&'static str, String)>,
}

fn allows(rule: &Rule, origin: &str, method: &str) -> bool {
    rule.origins.iter().any(|o| matches(o, origin, false))
        && rule.methods.iter().any(|m| m == method)
}

fn allow_origin(rule: &Rule, origin: &str) -> String {
    if rule.origins.iter().any(|o| o == "*") {
        "*".into()
    } else {
        origin.into()
    }
}

/// The answer to a preflight asking for `method` with `requested` headers.
pub fn preflight(
    rules: &[Rule],
    origin: &str,
    method: &str,
    requested: &[String],
) -> Option<Grant> {
    let rule = rules.iter().find(|rule| {
        allows(rule, origin, method)
            && requested
                .iter()
                .all(|h| rule.headers.iter().any(|p| matches(p, h, true)))
    })?;
    let mut headers = vec![
        ("Access-Control-Allow-Origin", allow_origin(rule, origin)),
        ("Access-Control-Allow-Methods", rule.methods.join(", ")),
        (
            "Vary",
            "Origin, Access-Control-Request-Headers, Access-Control-Request-Method".into(),
        ),
    ];
    if !requested.is_empty() {
        headers.push(("Access-Control-Allow-Headers", requested.join(", ")));
    }
    if !rule.expose.is_empty() {
        headers.push(("Access-Control-Expose-Headers", rule.expose.join(", ")));
    }
    if let Some(age) = rule.max_age {
        headers.push(("Access-Control-Max-Age", age.to_string()));
    }
    Some(Grant { headers })
}

/// The headers added to an actual request's response.
pub fn actual(rules: &[Rule], origin: &str, method: &str) -> Option<Grant> {
    let rule = rules.iter().find(|rule| allows(rule, origin, method))?;
    let mut headers = vec![
        ("Access-Control-Allow-Origin", allow_origin(rule, origin)),
        ("Access-Control-Allow-Methods", rule.methods.join(", ")),
        ("Vary", "Origin".into()),
    ];
    if !rule.expose.is_empty() {
        headers.push(("Access-Control-Expose-Headers", rule.expose.join(", ")));
    }
    if let Some(age) = rule.max_age {
        headers.push(("Access-Control-Max-Age", age.to_string()));
    }
    Some(Grant { headers })
}

/// The bucket a request names: the host's subdomain under the configured
/// domain, else the first segment of the path.
pub fn bucket_of<B>(
    request: &http::Request<B>,
    domain: Option<&crate::host::Domain>,
) -> Option<String> {
    use s3s::host::S3Host;
    if let Some(domain) = domain
        && let Some(host) = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
        && let Ok(virtual_host) = domain.parse_host_header(host)
        && let Some(bucket) = virtual_host.bucket()
    {
        return Some(bucket.to_string());
    }
    let first = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()?;
    (!first.is_empty()).then(|| first.to_string())
}

fn refusal(status: u16, code: &str, message: &str) -> http::Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = http::Response::new(s3s::Body::from(body));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    response
}

/// The answer to a browser's preflight `OPTIONS`.
pub async fn preflight_response<B>(
    store: &crate::store::Store,
    bucket: Option<&str>,
    request: &http::Request<B>,
) -> http::Response<s3s::Body> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (Some(origin), Some(method)) = (header("origin"), header("access-control-request-method"))
    else {
        return refusal(
            400,
            "BadRequest",
            "Insufficient information. Origin and Access-Control-Request-Method request headers needed.",
        );
    };
    let requested: Vec<String> = header("access-control-request-headers")
        .map(|h| {
            h.split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let forbidden = || {
        refusal(
            403,
            "AccessForbidden",
            "CORSResponse: This CORS request is not allowed. The bucket has no CORS rule allowing this origin, method and headers.",
        )
    };
    let Some(bucket) = bucket else {
        return forbidden();
    };
    let Ok(dir) = store.bucket(bucket).await else {
        return forbidden();
    };
    let rules = match store.cors_rules(dir.ino).await {
        Ok(Some(rules)) => rules,
        Ok(None) => return forbidden(),
        Err(err) => {
            return refusal(
                503,
                "ServiceUnavailable",
                &format!("could not read the bucket's CORS rules: {}", err.message),
            );
        }
    };
    match preflight(&rules, &origin, &method, &requested) {
        Some(grant) => {
            let mut response = http::Response::new(s3s::Body::empty());
            for (name, value) in grant.headers {
                if let Ok(value) = http::HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        None => forbidden(),
    }
}

/// Adds the allowing headers to the response of a browser's request when
/// the bucket has a rule for its origin and method; nothing otherwise.
pub async fn add_headers(
    store: &crate::store::Store,
    bucket: &str,
    origin: &str,
    method: &str,
    response: &mut http::Response<s3s::Body>,
) {
    let Ok(dir) = store.bucket(bucket).await else {
        return;
    };
    let Ok(Some(rules)) = store.cors_rules(dir.ino).await else {
        return;
    };
    if let Some(grant) = actual(&rules, origin, method) {
        for (name, value) in grant.headers {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> Rule {
        Rule {
            origins: origins.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            expose: vec!["ETag".into()],
            max_age: Some(600),
            ..Rule::default()
        }
    }

    #[test]
    fn the_first_rule_allowing_origin_method_and_headers_answers() {
        let rules = vec![
            rule(
                &["https://*.example.com"],
                &["GET", "PUT"],
                &["x-amz-*", "content-type"],
            ),
            rule(&["*"], &["GET"], &[]),
        ];
        check(&rules).unwrap();
        assert_eq!(decode(&encode(&rules)).unwrap(), rules);
        let put = preflight(
            &rules,
            "https://app.example.com",
            "PUT",
            &["Content-Type".into(), "x-amz-date".into()],
        )
        .unwrap();
        assert!(put.headers.contains(&(
            "Access-Control-Allow-Origin",
            "https://app.example.com".into()
        )));
        assert!(
            put.headers
                .contains(&("Access-Control-Max-Age", "600".into()))
        );
        // Another origin may only GET, with no extra headers.
        assert!(preflight(&rules, "https://evil.test", "PUT", &[]).is_none());
        assert!(preflight(&rules, "https://evil.test", "GET", &["x-custom".into()]).is_none());
        let get = preflight(&rules, "https://evil.test", "GET", &[]).unwrap();
        assert!(
            get.headers
                .contains(&("Access-Control-Allow-Origin", "*".into()))
        );
        assert!(actual(&rules, "https://evil.test", "DELETE").is_none());
        assert!(actual(&rules, "https://a.example.com", "PUT").is_some());
        assert!(!matches(
            "https://*.example.com",
            "https://example.org",
            false
        ));
    }

    #[test]
    fn configurations_s3_refuses_are_refused() {
        assert!(check(&[]).is_err());
        assert!(check(&[rule(&["*"], &["PATCH"], &[])]).is_err());
        assert!(check(&[rule(&[], &["GET"], &[])]).is_err());
        assert!(check(&[rule(&["https://*.*.com"], &["GET"], &[])]).is_err());
        assert!(check(&vec![rule(&["*"], &["GET"], &[]); RULES_MAX + 1]).is_err());
    }
}
