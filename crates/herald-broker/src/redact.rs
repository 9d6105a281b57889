//! Broker addresses as they may be shown in logs and errors: the credentials a URL carries
//! (`user:password@`, a token, or `:password@`) are replaced by `***`.

/// `url` without its credentials. A comma-separated list of servers is redacted server by
/// server; a server without a scheme is redacted too (`tok@host` → `***@host`).
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let host_and_tail = &rest[at + 1..];
    match scheme {
        Some(scheme) => format!("{scheme}://***@{host_and_tail}"),
        None => format!("***@{host_and_tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_are_replaced_and_the_rest_kept() {
        assert_eq!(
            redact_url("nats://user:secret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(
            redact_url("nats://a:4222,tls://tok@b:4222"),
            "nats://a:4222,tls://***@b:4222"
        );
        assert_eq!(redact_url("host:4222"), "host:4222");
        assert_eq!(redact_url("tok@host:4222"), "***@host:4222");
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://a:b@c@host/x?y=z"),
            "amqp://***@host/x?y=z"
        );
        assert_eq!(
            redact_url("redis://:secret@host:6379/2"),
            "redis://***@host:6379/2"
        );
        assert_eq!(redact_url("redis://u:p@ss@host"), "redis://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        // An `@` after the authority is not a credential.
        assert_eq!(
            redact_url("amqp://host:5672/vhost?name=a@b"),
            "amqp://host:5672/vhost?name=a@b"
        );
    }
}
