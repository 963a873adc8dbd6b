//! Virtual-hosted-style addressing (`bucket.s3.example.com/key`) under one
//! configured domain, beside path style (`s3.example.com/bucket/key`),
//! which every other host name and every IP address keeps. s3s's
//! `SingleDomain` would take any other host for a bucket's own name (a
//! CNAME), which would turn `127.0.0.1:9000` into a bucket.

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

pub struct Domain {
    /// Lower case, without a port.
    domain: String,
}

impl Domain {
    /// `None` for a name that cannot be a domain (empty, a dot at either
    /// end, a port, a scheme).
    pub fn new(domain: &str) -> Option<Domain> {
        let domain = domain.trim().to_ascii_lowercase();
        let valid = !domain.is_empty()
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        valid.then_some(Domain { domain })
    }
}

impl S3Host for Domain {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        // The port, if any, plays no part; IPv6 literals keep path style.
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        };
        let name = name.to_ascii_lowercase();
        if let Some(bucket) = name
            .strip_suffix(self.domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|bucket| !bucket.is_empty())
        {
            return Ok(VirtualHost::new(host).with_bucket(bucket.to_string()));
        }
        Ok(VirtualHost::new(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_come_from_subdomains_and_everything_else_is_path_style() {
        let domain = Domain::new("S3.Example.com").unwrap();
        let bucket = |host: &str| {
            domain
                .parse_host_header(host)
                .unwrap()
                .bucket()
                .map(str::to_string)
        };
        assert_eq!(bucket("photos.s3.example.com"), Some("photos".into()));
        assert_eq!(bucket("Photos.S3.example.com:9000"), Some("photos".into()));
        assert_eq!(
            bucket("my.dotted.bucket.s3.example.com"),
            Some("my.dotted.bucket".into())
        );
        assert_eq!(bucket("s3.example.com"), None);
        assert_eq!(bucket("s3.example.com:9000"), None);
        assert_eq!(bucket("127.0.0.1:9000"), None);
        assert_eq!(bucket("[::1]:9000"), None);
        assert_eq!(bucket("other.example.net"), None);
        assert_eq!(bucket("xs3.example.com"), None);
        assert!(Domain::new("").is_none());
        assert!(Domain::new("https://s3.example.com").is_none());
        assert!(Domain::new(".example.com").is_none());
    }
}
