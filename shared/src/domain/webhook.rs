//! Outgoing webhooks: signing secrets, Standard Webhooks signatures, endpoint URLs with the
//! SSRF guard, event-type filters and the retry schedule.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::ValidationError;
use crate::crypto::random_bytes;

/// A `whsec_…` signing secret: 24 random bytes, base64 after the prefix (the Standard
/// Webhooks format, which its libraries accept as is).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSecret(…{})", self.last4())
    }
}

impl SigningSecret {
    pub const PREFIX: &'static str = "whsec_";

    pub fn generate() -> Self {
        Self(format!(
            "{}{}",
            Self::PREFIX,
            STANDARD.encode(random_bytes::<24>())
        ))
    }

    /// Parses a stored secret.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let body = raw
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| ValidationError("must start with `whsec_`".into()))?;
        let bytes = STANDARD
            .decode(body)
            .map_err(|_| ValidationError("must be base64 after `whsec_`".into()))?;
        if bytes.len() < 16 {
            return Err(ValidationError("must hold at least 16 bytes".into()));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn last4(&self) -> &str {
        &self.0[self.0.len().saturating_sub(4)..]
    }

    /// The HMAC key: the bytes the base64 encodes.
    pub fn key(&self) -> Vec<u8> {
        STANDARD
            .decode(&self.0[Self::PREFIX.len()..])
            .unwrap_or_default()
    }
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn sign(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per secret, separated by spaces.
pub fn signature_header(keys: &[Vec<u8>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which event types an endpoint receives: every one (`*`) or those listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Vec<String>);

impl EventFilter {
    pub fn all() -> Self {
        Self(vec!["*".into()])
    }

    /// At least one entry, each `*` or a dotted lower-case type such as `invoice.paid`.
    pub fn parse(types: &[String]) -> Result<Self, ValidationError> {
        if types.is_empty() {
            return Err(ValidationError(
                "must list at least one event type, or `*`".into(),
            ));
        }
        if types.len() > 100 {
            return Err(ValidationError("must list at most 100 event types".into()));
        }
        let mut out: Vec<String> = Vec::with_capacity(types.len());
        for t in types {
            let t = t.trim();
            let valid = t == "*"
                || (t.len() <= 100
                    && t.contains('.')
                    && t.split('.').all(|part| {
                        !part.is_empty()
                            && part
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    }));
            if !valid {
                return Err(ValidationError(format!(
                    "`{t}` is not an event type (like `invoice.paid`) or `*`"
                )));
            }
            if !out.iter().any(|o| o == t) {
                out.push(t.to_owned());
            }
        }
        if out.iter().any(|t| t == "*") {
            return Ok(Self::all());
        }
        Ok(Self(out))
    }

    /// From stored values (trusted).
    pub fn from_stored(types: Vec<String>) -> Self {
        Self(types)
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.0.iter().any(|t| t == "*" || t == event_type)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must be an absolute http(s) URL")]
    Malformed,
    #[error("must use https in live mode")]
    HttpsRequired,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("must be at most 2048 characters")]
    TooLong,
    #[error("points at a private, loopback, link-local or otherwise internal address ({0})")]
    ForbiddenAddress(IpAddr),
    #[error("names a host that does not resolve")]
    Unresolvable,
    #[error("names an internal host ({0})")]
    ForbiddenHost(String),
}

/// The rules a webhook URL must follow.
#[derive(Debug, Clone, Copy)]
pub struct UrlPolicy {
    pub livemode: bool,
    /// Local development and tests: allow http and internal addresses.
    pub allow_private: bool,
}

/// A webhook URL that passed the syntactic checks (addresses are checked again at send time,
/// on the addresses the name then resolves to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn parse(raw: &str, policy: UrlPolicy) -> Result<Self, UrlError> {
        let raw = raw.trim();
        if raw.len() > 2048 {
            return Err(UrlError::TooLong);
        }
        let url = url::Url::parse(raw).map_err(|_| UrlError::Malformed)?;
        match url.scheme() {
            "https" => {}
            "http" if !policy.livemode || policy.allow_private => {}
            "http" => return Err(UrlError::HttpsRequired),
            _ => return Err(UrlError::Malformed),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        match url.host() {
            None => return Err(UrlError::Malformed),
            Some(url::Host::Domain("")) => return Err(UrlError::Malformed),
            Some(url::Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), policy)?,
            Some(url::Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), policy)?,
            Some(url::Host::Domain(d)) => {
                let name = d.trim_end_matches('.').to_ascii_lowercase();
                let internal = name == "localhost"
                    || name.ends_with(".localhost")
                    || name.ends_with(".local")
                    || name.ends_with(".internal")
                    || name.starts_with("ip6-");
                if internal && !policy.allow_private {
                    return Err(UrlError::ForbiddenHost(name));
                }
            }
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The host name when it is a name rather than an address.
    pub fn domain(&self) -> Option<&str> {
        self.0.domain()
    }

    pub fn port(&self) -> u16 {
        self.0.port_or_known_default().unwrap_or(443)
    }
}

fn check_ip(ip: IpAddr, policy: UrlPolicy) -> Result<(), UrlError> {
    if policy.allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(UrlError::ForbiddenAddress(ip))
    }
}

/// Checks every address a name resolved to: all must be public (unless allowed).
pub fn check_resolved(addrs: &[IpAddr], allow_private: bool) -> Result<(), UrlError> {
    if addrs.is_empty() {
        return Err(UrlError::Unresolvable);
    }
    if allow_private {
        return Ok(());
    }
    match addrs.iter().find(|a| !is_public(**a)) {
        Some(bad) => Err(UrlError::ForbiddenAddress(*bad)),
        None => Ok(()),
    }
}

/// Whether a webhook may be sent to this address: not loopback, private, link-local (cloud
/// metadata included), CGNAT, multicast, unspecified, broadcast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            // 6to4 (2002::/16) embeds one in its second and third groups.
            if seg[0] == 0x2002 {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x2001 && seg[1] == 0) // Teredo tunnels
                || (seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0) // benchmarking 2001:2::/48
                || (seg[0] == 0x2001 && (seg[1] & 0xfff0) == 0x10) // ORCHID 2001:10::/28
                || (seg[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
                || seg[0] == 0x5f00 // SRv6 SIDs 5f00::/16
                || (seg[0] == 0x100 && seg[1..4] == [0, 0, 0]) // discard 100::/64
                || (seg[0..4] == [0, 0, 0, 0] && seg[4] == 0xffff && seg[5] == 0) // IPv4-translated
                || (seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2] == 1) // local NAT64
                || v6 == Ipv6Addr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
                || seg[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240) // reserved
}

/// The wait before the next attempt after `failures` failed attempts in a row (1 = the
/// first), or `None` when the schedule is used up and the delivery has failed.
pub fn next_retry(schedule: &[Duration], failures: i32) -> Option<Duration> {
    let i = usize::try_from(failures.checked_sub(1)?).ok()?;
    schedule.get(i).copied()
}

/// What one attempt to send a webhook came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status (2xx is success).
    Answered(u16),
    /// No answer: connection refused, timeout, TLS failure, refused address…
    NoAnswer(String),
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        matches!(self, AttemptResult::Answered(s) if (200..300).contains(s))
    }
}

/// What happens to the endpoint after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointChange {
    /// Success: its run of failures (if any) ends.
    Healthy,
    /// Failure: a run of failures starts (or goes on) at this time.
    Failing(chrono::DateTime<chrono::Utc>),
    /// Disabled: `410 Gone`, or failing for longer than allowed.
    Disable(DisableReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    Gone,
    FailingTooLong,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::Gone => "gone",
            DisableReason::FailingTooLong => "failing",
        }
    }
}

crate::text_enum! {
    /// Where a webhook delivery stands.
    pub enum DeliveryStatus {
        /// Not sent yet, or to be tried again.
        Pending = "pending",
        Succeeded = "succeeded",
        /// Given up on (retries exhausted, the endpoint gone or disabled).
        Failed = "failed",
    }
}

/// The decision after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptDecision {
    /// Succeeded, pending (retry at `retry_at`) or failed.
    pub status: DeliveryStatus,
    pub retry_at: Option<chrono::DateTime<chrono::Utc>>,
    pub endpoint: EndpointChange,
}

/// Decides a delivery's and its endpoint's fate after an attempt. `failures_before` counts
/// failed attempts in a row before this one; `failing_since` is the endpoint's.
pub fn decide(
    result: &AttemptResult,
    failures_before: i32,
    schedule: &[Duration],
    failing_since: Option<chrono::DateTime<chrono::Utc>>,
    disable_after: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> AttemptDecision {
    if result.succeeded() {
        return AttemptDecision {
            status: DeliveryStatus::Succeeded,
            retry_at: None,
            endpoint: EndpointChange::Healthy,
        };
    }
    if *result == AttemptResult::Answered(410) {
        return AttemptDecision {
            status: DeliveryStatus::Failed,
            retry_at: None,
            endpoint: EndpointChange::Disable(DisableReason::Gone),
        };
    }
    let since = failing_since.unwrap_or(now);
    let limit = chrono::Duration::from_std(disable_after).unwrap_or(chrono::Duration::days(5));
    if now - since >= limit {
        return AttemptDecision {
            status: DeliveryStatus::Failed,
            retry_at: None,
            endpoint: EndpointChange::Disable(DisableReason::FailingTooLong),
        };
    }
    let retry_at = next_retry(schedule, failures_before + 1)
        .map(|wait| now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(10)));
    AttemptDecision {
        status: if retry_at.is_some() {
            DeliveryStatus::Pending
        } else {
            DeliveryStatus::Failed
        },
        retry_at,
        endpoint: EndpointChange::Failing(since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        livemode: true,
        allow_private: false,
    };

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // From the Standard Webhooks specification's reference test vector.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(
            &secret.key(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_give_two_space_separated_signatures() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        let header = signature_header(&[a.key(), b.key()], "msg_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn generated_secrets_parse_and_hold_24_bytes() {
        let s = SigningSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(SigningSecret::parse(s.expose()).unwrap(), s);
        assert_eq!(s.key().len(), 24);
        assert!(SigningSecret::parse("whsec_!!").is_err());
        assert!(SigningSecret::parse("sk_abc").is_err());
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "::ffff:0:a00:1",
            "100::1",
            "2001:2::1",
            "3fff::1",
            "192.88.99.1",
        ] {
            assert!(!is_public(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn live_urls_must_be_https_and_not_internal_literals() {
        assert_eq!(
            WebhookUrl::parse("http://example.com/h", STRICT),
            Err(UrlError::HttpsRequired)
        );
        assert!(WebhookUrl::parse("https://example.com/h", STRICT).is_ok());
        assert!(matches!(
            WebhookUrl::parse("https://10.0.0.8/h", STRICT),
            Err(UrlError::ForbiddenAddress(_))
        ));
        assert!(matches!(
            WebhookUrl::parse("https://[::1]/h", STRICT),
            Err(UrlError::ForbiddenAddress(_))
        ));
        assert_eq!(
            WebhookUrl::parse("https://u:p@example.com/", STRICT),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            WebhookUrl::parse("ftp://example.com/", STRICT),
            Err(UrlError::Malformed)
        );
        assert_eq!(
            WebhookUrl::parse("not a url", STRICT),
            Err(UrlError::Malformed)
        );
        let test_mode = UrlPolicy {
            livemode: false,
            allow_private: false,
        };
        assert!(WebhookUrl::parse("http://example.com/h", test_mode).is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:9/h", test_mode).is_err());
        let dev = UrlPolicy {
            livemode: true,
            allow_private: true,
        };
        assert!(WebhookUrl::parse("http://127.0.0.1:9/h", dev).is_ok());
    }

    #[test]
    fn resolved_addresses_must_all_be_public() {
        let public: IpAddr = "8.8.8.8".parse().unwrap();
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(check_resolved(&[public], false).is_ok());
        assert!(check_resolved(&[public, private], false).is_err());
        assert!(check_resolved(&[private], true).is_ok());
        assert_eq!(check_resolved(&[], false), Err(UrlError::Unresolvable));
    }

    #[test]
    fn event_filters_accept_types_and_star() {
        let f = EventFilter::parse(&["invoice.paid".into(), "customer.created".into()]).unwrap();
        assert!(f.matches("invoice.paid"));
        assert!(!f.matches("invoice.created"));
        let all = EventFilter::parse(&["invoice.paid".into(), "*".into()]).unwrap();
        assert_eq!(all, EventFilter::all());
        assert!(all.matches("anything.at_all"));
        assert!(EventFilter::parse(&[]).is_err());
        assert!(EventFilter::parse(&["Invoice.Paid".into()]).is_err());
        assert!(EventFilter::parse(&["invoice".into()]).is_err());
    }

    fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_2xx_succeeds_and_heals_the_endpoint() {
        let d = decide(
            &AttemptResult::Answered(204),
            3,
            &[],
            Some(at(0)),
            Duration::from_secs(10),
            at(5),
        );
        assert_eq!(d.status, DeliveryStatus::Succeeded);
        assert_eq!(d.endpoint, EndpointChange::Healthy);
    }

    #[test]
    fn failures_follow_the_schedule_then_fail() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        let week = Duration::from_secs(7 * 86_400);
        let d = decide(
            &AttemptResult::Answered(500),
            0,
            &schedule,
            None,
            week,
            at(0),
        );
        assert_eq!(
            (d.status, d.retry_at),
            (DeliveryStatus::Pending, Some(at(5)))
        );
        assert_eq!(d.endpoint, EndpointChange::Failing(at(0)));
        let d = decide(
            &AttemptResult::NoAnswer("timeout".into()),
            1,
            &schedule,
            Some(at(0)),
            week,
            at(5),
        );
        assert_eq!(
            (d.status, d.retry_at),
            (DeliveryStatus::Pending, Some(at(305)))
        );
        assert_eq!(d.endpoint, EndpointChange::Failing(at(0)));
        let d = decide(
            &AttemptResult::Answered(302),
            2,
            &schedule,
            Some(at(0)),
            week,
            at(305),
        );
        assert_eq!((d.status, d.retry_at), (DeliveryStatus::Failed, None));
    }

    #[test]
    fn gone_disables_at_once() {
        let d = decide(
            &AttemptResult::Answered(410),
            0,
            &[Duration::from_secs(5)],
            None,
            Duration::from_secs(100),
            at(0),
        );
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(d.endpoint, EndpointChange::Disable(DisableReason::Gone));
    }

    #[test]
    fn failing_longer_than_allowed_disables() {
        let schedule = [Duration::from_secs(5); 10];
        let limit = Duration::from_secs(100);
        let d = decide(
            &AttemptResult::Answered(503),
            4,
            &schedule,
            Some(at(0)),
            limit,
            at(99),
        );
        assert_eq!(d.status, DeliveryStatus::Pending);
        let d = decide(
            &AttemptResult::Answered(503),
            5,
            &schedule,
            Some(at(0)),
            limit,
            at(100),
        );
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(
            d.endpoint,
            EndpointChange::Disable(DisableReason::FailingTooLong)
        );
    }

    #[test]
    fn the_retry_schedule_runs_out() {
        let s = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(next_retry(&s, 1), Some(Duration::from_secs(5)));
        assert_eq!(next_retry(&s, 2), Some(Duration::from_secs(300)));
        assert_eq!(next_retry(&s, 3), None);
        assert_eq!(next_retry(&s, 0), None);
    }
}
