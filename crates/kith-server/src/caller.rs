//! What a request says about who sent it: the client's IP address (recorded in `context.ip`
//! only when the operator chooses to) and the scheme and host the browser used, as the request
//! itself or a proxy in front of Kith (`Forwarded`, `X-Forwarded-*`) tells them.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use ipnet::IpNet;
use kith_core::Event;
use serde::Deserialize;

/// Whether the server records the client's IP address in `context.ip` of events whose client
/// did not set one, as Segment's API does.
///
/// Off by default: an IP address is personal data, and a shop that must ask for consent before
/// collecting it should turn it on knowingly. `Truncated` keeps the network, not the
/// subscriber: an IPv4 address's first three bytes (its /24) and an IPv6 address's first four
/// (its /32, an ISP's block: ISPs give each subscriber a /48 or /56, so keeping more would
/// name a household).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ClientIpPolicy {
    #[default]
    Off,
    Truncated,
    Full,
}

impl FromStr for ClientIpPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(ClientIpPolicy::Off),
            "truncated" => Ok(ClientIpPolicy::Truncated),
            "full" => Ok(ClientIpPolicy::Full),
            _ => Err(format!(
                "`{text}` is not a client IP policy; use off (the default: no IP is recorded), \
                 truncated (the network only: an IPv4 /24, an IPv6 /32) or full"
            )),
        }
    }
}

impl TryFrom<String> for ClientIpPolicy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl ClientIpPolicy {
    /// The address to record for a request, as text, or `None` when nothing is recorded.
    pub(crate) fn address_to_record(self, origin: &Origin<'_>) -> Option<String> {
        let ip = match self {
            ClientIpPolicy::Off => return None,
            ClientIpPolicy::Full => origin.client_ip()?,
            ClientIpPolicy::Truncated => truncated(origin.client_ip()?),
        };
        Some(ip.to_string())
    }
}

/// The proxies whose `Forwarded` and `X-Forwarded-*` headers are believed. Anyone can write
/// those headers; only a proxy in front of Kith should be taken at its word about the client's
/// address, scheme and host.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedProxies(Vec<IpNet>);

impl Default for TrustedProxies {
    /// Loopback and private networks, where a reverse proxy in front of Kith usually runs.
    fn default() -> Self {
        let networks = [
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "::1/128",
            "fc00::/7",
        ];
        TrustedProxies(networks.iter().filter_map(|n| n.parse().ok()).collect())
    }
}

impl TrustedProxies {
    /// Addresses or networks (`10.0.0.0/8`, `2001:db8::/32`, `203.0.113.5`); an empty list
    /// trusts no proxy.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut networks = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = entry.as_ref().trim();
            let network = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!(
                        "`{text}` is not an address or a network; write a proxy's address \
                         (10.0.0.2, 2001:db8::2) or a network in CIDR form (10.0.0.0/8)"
                    )
                })?;
            networks.push(network);
        }
        Ok(TrustedProxies(networks))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|network| network.contains(&ip))
    }
}

/// Where a request came from, as far as the server can tell: the connection's peer and, when
/// that peer is a trusted proxy, what the proxy says.
pub(crate) struct Origin<'a> {
    headers: &'a HeaderMap,
    peer: Option<IpAddr>,
    trusted: &'a TrustedProxies,
    /// Whether the proxy headers are believed: the peer is a trusted proxy, or the request was
    /// handed to the router in-process (tests), with no peer at all.
    believed: bool,
}

impl<'a> Origin<'a> {
    pub(crate) fn new(
        headers: &'a HeaderMap,
        peer: PeerAddress,
        trusted: &'a TrustedProxies,
    ) -> Self {
        let peer = peer.0.map(|ip| ip.to_canonical());
        Origin {
            headers,
            peer,
            trusted,
            believed: peer.is_none_or(|ip| trusted.contains(ip)),
        }
    }

    /// The client's IP address. From an untrusted peer, the peer itself. From a trusted proxy,
    /// the hop just before the nearest trusted proxies in `Forwarded: for=` (else
    /// `X-Forwarded-For`), read from the right: each proxy appends the address it saw, so
    /// what stands left of that was written by the client and may be anything. A value that is
    /// not an address (`unknown`, an obfuscated `_hidden`) is passed over.
    pub(crate) fn client_ip(&self) -> Option<IpAddr> {
        if !self.believed {
            return self.peer;
        }
        let forwarded = listed(self.headers, "forwarded").filter_map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| parse_node(value.trim().trim_matches('"')))
        });
        let forwarded: Vec<IpAddr> = forwarded.collect();
        let chain = if forwarded.is_empty() {
            listed(self.headers, "x-forwarded-for")
                .filter_map(parse_node)
                .collect()
        } else {
            forwarded
        };
        let chain: Vec<IpAddr> = chain.into_iter().map(|ip| ip.to_canonical()).collect();
        chain
            .iter()
            .rev()
            .find(|ip| !self.trusted.contains(**ip))
            .or(chain.first())
            .copied()
            .or(self.peer)
    }

    /// The scheme and host a browser reached this server by, for documents that point SDKs
    /// back at it. Behind a proxy that terminates TLS (the usual way to serve Kith on the
    /// internet) the request arrives over plain HTTP, but a page served over HTTPS may only
    /// send to HTTPS: a trusted proxy's `Forwarded` (RFC 7239) or `X-Forwarded-Proto` /
    /// `X-Forwarded-Host` headers say what the browser used. Otherwise, the request's own
    /// `Host` over `http`.
    pub(crate) fn public_address(&self) -> (&'static str, String) {
        let headers = self.headers;
        let told = |key: &str, header: &str| {
            self.believed
                .then(|| forwarded_param(headers, key).or_else(|| first_listed(headers, header)))
                .flatten()
        };
        let protocol = match told("proto", "x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = told("host", "x-forwarded-host")
            .filter(|h| !h.is_empty())
            .or_else(|| header_text(headers, header::HOST.as_str()).map(str::to_string))
            .unwrap_or_else(|| "localhost".to_string());
        (protocol, host)
    }
}

/// The address of the connection's other end, when the server was started with it (requests
/// handed to the router directly, as in tests, have none).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerAddress(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddress {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddress(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// An address as proxies write it: bare, with a port (`192.0.2.1:4711`), or an IPv6 one in
/// brackets, with or without a port (`[2001:db8::1]:4711`).
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, _port) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, _port) = text.rsplit_once(':')?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The address with its subscriber's part zeroed: an IPv4 address's last byte (a /24), an
/// IPv6 address's last twelve bytes (a /32).
pub(crate) fn truncated(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let mut bytes = v6.octets();
            bytes[4..].fill(0);
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    }
}

/// Adds `"ip": address` to the `context` of each event whose client did not name `ip` there
/// (the parser says which did: [`kith_core::TypedFields::context_names_ip`]).
pub(crate) fn record_address(events: &mut [Event], address: &str) {
    for event in events {
        if !event.typed.context_names_ip {
            event.context = with_ip(event.context.take(), address);
        }
    }
}

/// `context` with `"ip": address` added. Events hold their objects as the client's JSON text,
/// so the field is spliced in rather than the object parsed and written again.
fn with_ip(context: Option<String>, address: &str) -> Option<String> {
    let field = format!("\"ip\":{}", serde_json::Value::from(address));
    let Some(text) = context else {
        return Some(format!("{{{field}}}"));
    };
    let Some(inside) = text.trim_start().strip_prefix('{') else {
        return Some(text);
    };
    Some(if inside.trim_start().starts_with('}') {
        format!("{{{field}}}")
    } else {
        format!("{{{field},{inside}")
    })
}

/// The value of `key` in the first element of `Forwarded` (RFC 7239): the client's own hop.
fn forwarded_param(headers: &HeaderMap, key: &str) -> Option<String> {
    header_text(headers, "forwarded")?
        .split(',')
        .next()?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// The first entry of a comma-separated header such as `X-Forwarded-For`.
fn first_listed(headers: &HeaderMap, name: &str) -> Option<String> {
    header_text(headers, name)
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
}

/// Every entry of a comma-separated header, over all its lines, in order.
fn listed<'h>(headers: &'h HeaderMap, name: &str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

/// A header's first line that holds something (a proxy may have added an empty one).
fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| !v.trim().is_empty())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    /// A header map from name and value pairs, in order (a name may repeat).
    pub(crate) fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in list {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(text: &str) -> PeerAddress {
        PeerAddress(Some(text.parse().unwrap()))
    }

    /// What a request from `from` says, with the default trusted proxies.
    fn public_address(headers: &HeaderMap, from: PeerAddress) -> (&'static str, String) {
        Origin::new(headers, from, &TrustedProxies::default()).public_address()
    }

    fn client_ip(headers: &HeaderMap, from: PeerAddress) -> Option<IpAddr> {
        Origin::new(headers, from, &TrustedProxies::default()).client_ip()
    }

    #[test]
    fn the_public_address_is_the_one_the_browser_used_through_a_proxy() {
        let proxy = peer("10.0.0.2");
        let local = headers(&[("host", "127.0.0.1:8417")]);
        assert_eq!(
            public_address(&local, proxy),
            ("http", "127.0.0.1:8417".into())
        );
        let proxied = headers(&[
            ("host", "10.0.0.5:8417"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "collect.tienda.mx"),
        ]);
        assert_eq!(
            public_address(&proxied, proxy),
            ("https", "collect.tienda.mx".into())
        );
        // From a client that is not a trusted proxy, the request's own Host over http.
        assert_eq!(
            public_address(&proxied, peer("203.0.113.50")),
            ("http", "10.0.0.5:8417".into())
        );
        let standard = headers(&[
            ("host", "10.0.0.5:8417"),
            (
                "forwarded",
                "for=203.0.113.7;proto=https;host=\"collect.tienda.mx\", for=10.0.0.2;proto=http",
            ),
        ]);
        assert_eq!(
            public_address(&standard, proxy),
            ("https", "collect.tienda.mx".into())
        );
        // Only the proxy's protocol: the host is the request's own.
        let proto_only = headers(&[("host", "tienda.mx"), ("x-forwarded-proto", "HTTPS, http")]);
        assert_eq!(
            public_address(&proto_only, proxy),
            ("https", "tienda.mx".into())
        );
        assert_eq!(
            public_address(&HeaderMap::new(), proxy),
            ("http", "localhost".into())
        );
    }

    #[test]
    fn the_client_ip_is_the_hop_before_the_trusted_proxies_else_the_peer() {
        let none = HeaderMap::new();
        assert_eq!(
            client_ip(&none, peer("198.51.100.4")),
            Some("198.51.100.4".parse().unwrap())
        );
        assert_eq!(client_ip(&none, PeerAddress(None)), None);
        // A dual-stack listener sees IPv4 clients as mapped IPv6 addresses.
        assert_eq!(
            client_ip(&none, peer("::ffff:198.51.100.4")),
            Some("198.51.100.4".parse().unwrap())
        );
        let xff = headers(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        assert_eq!(
            client_ip(&xff, peer("10.0.0.3")),
            Some("203.0.113.7".parse().unwrap())
        );
        // What the client wrote itself, left of what the proxy appended, is not believed.
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(
            client_ip(&spoofed, peer("10.0.0.3")),
            Some("203.0.113.7".parse().unwrap())
        );
        // Nor are the headers of a peer that is not a trusted proxy.
        assert_eq!(
            client_ip(&xff, peer("198.51.100.4")),
            Some("198.51.100.4".parse().unwrap())
        );
        // A client inside the trusted networks is itself the first hop.
        let inside = headers(&[("x-forwarded-for", "192.168.1.20")]);
        assert_eq!(
            client_ip(&inside, peer("10.0.0.3")),
            Some("192.168.1.20".parse().unwrap())
        );
        let standard = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.2",
            ),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(
            client_ip(&standard, peer("10.0.0.3")),
            Some("2001:db8:cafe::17".parse().unwrap())
        );
        let with_port = headers(&[("forwarded", "For=192.0.2.43:47011")]);
        assert_eq!(
            client_ip(&with_port, PeerAddress(None)),
            Some("192.0.2.43".parse().unwrap())
        );
        // Header lines are one list: an empty one a proxy added, and one per proxy.
        let lines = headers(&[
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            client_ip(&lines, peer("10.0.0.3")),
            Some("203.0.113.9".parse().unwrap())
        );
        // Hidden or unknown hops are passed over.
        let hidden = headers(&[("forwarded", "for=_hidden"), ("x-forwarded-for", "unknown")]);
        assert_eq!(
            client_ip(&hidden, peer("10.0.0.3")),
            Some("10.0.0.3".parse().unwrap())
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let trusted =
            TrustedProxies::parse(&["203.0.113.5", "2001:db8::/32", " 10.0.0.0/8 "]).unwrap();
        assert!(trusted.contains("203.0.113.5".parse().unwrap()));
        assert!(!trusted.contains("203.0.113.6".parse().unwrap()));
        assert!(trusted.contains("2001:db8:1::9".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.2.3".parse().unwrap()));
        let none = TrustedProxies::parse::<&str>(&[]).unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(
            Origin::new(&xff, peer("127.0.0.1"), &none).client_ip(),
            Some("127.0.0.1".parse().unwrap())
        );
        let err = TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err();
        assert!(
            err.contains("`10.0.0.0/33`") && err.contains("CIDR"),
            "{err}"
        );
    }

    #[test]
    fn truncation_keeps_the_network_and_drops_the_host() {
        assert_eq!(
            truncated("189.203.45.201".parse().unwrap()),
            "189.203.45.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            truncated("2806:10be:7:2a1f::5".parse().unwrap()),
            "2806:10be::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_policy_decides_what_is_recorded() {
        let trusted = TrustedProxies::default();
        let xff = headers(&[("x-forwarded-for", "189.203.45.201")]);
        let empty = HeaderMap::new();
        let from = |headers| Origin::new(headers, PeerAddress(None), &trusted);
        assert_eq!(ClientIpPolicy::Off.address_to_record(&from(&xff)), None);
        assert_eq!(
            ClientIpPolicy::Full
                .address_to_record(&from(&xff))
                .as_deref(),
            Some("189.203.45.201")
        );
        assert_eq!(
            ClientIpPolicy::Truncated
                .address_to_record(&from(&xff))
                .as_deref(),
            Some("189.203.45.0")
        );
        assert_eq!(ClientIpPolicy::Full.address_to_record(&from(&empty)), None);
        assert_eq!("Truncated".parse(), Ok(ClientIpPolicy::Truncated));
        let err = "anonymized".parse::<ClientIpPolicy>().unwrap_err();
        assert!(
            err.contains("`anonymized`") && err.contains("truncated"),
            "{err}"
        );
    }

    /// The contexts of a batch of one track each, as the parser leaves them, once the server
    /// recorded the address.
    fn recorded(contexts: &[String]) -> Vec<Option<String>> {
        let items: Vec<String> = contexts
            .iter()
            .enumerate()
            .map(|(i, context)| {
                format!(
                    r#"{{"type":"track","event":"Paid","userId":"u","messageId":"m{i}","context":{context}}}"#
                )
            })
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, items.join(","));
        let request = kith_core::parse_batch_request(&body).unwrap();
        let mut outcome = request.normalize("web", chrono::Utc::now());
        assert!(outcome.rejections.is_empty(), "{:?}", outcome.rejections);
        record_address(&mut outcome.events, "189.203.45.0");
        outcome.events.into_iter().map(|e| e.context).collect()
    }

    proptest! {
        /// Whatever object the client's context is (keys, nesting, spacing as sent), it stays
        /// a JSON object: the same one with `ip` added, or the same text when it named `ip`.
        #[test]
        fn the_context_stays_a_valid_object(
            fields in prop::collection::vec(
                ("[a-z]{1,3}|ip", prop_oneof![
                    Just(serde_json::Value::Null),
                    "\\PC{0,8}".prop_map(serde_json::Value::from),
                    (0i64..100).prop_map(serde_json::Value::from),
                    ("[a-z]{1,3}", "\\PC{0,8}").prop_map(|(k, v)| serde_json::json!({k: v})),
                ]),
                0..6,
            ),
            spacing in "[ \n]{0,2}",
        ) {
            let object: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
            let text = serde_json::to_string_pretty(&object)
                .unwrap()
                .replacen('{', &format!("{{{spacing}"), 1);
            let [result] = &recorded(&[text])[..] else { unreachable!() };
            let parsed: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(result.as_deref().unwrap()).unwrap();
            let mut expected = object.clone();
            expected.entry("ip").or_insert("189.203.45.0".into());
            prop_assert_eq!(parsed, expected);
        }
    }

    #[test]
    fn the_ip_is_added_to_context_unless_the_client_set_one() {
        assert_eq!(
            with_ip(None, "189.203.45.0").as_deref(),
            Some(r#"{"ip":"189.203.45.0"}"#)
        );
        let contexts = [
            "{}",
            "{ }",
            r#"{"locale":"es-MX","page":{"ip":"nested"}}"#,
            r#"{"page":"not an object"}"#,
            // The client's own, even null or named twice, is kept.
            r#"{"ip":"0.0.0.0","locale":"es-MX"}"#,
            r#"{"locale":"es-MX","ip":null}"#,
            r#"{"ip":"1.1.1.1","ip":"2.2.2.2"}"#,
        ];
        let contexts: Vec<String> = contexts.iter().map(|c| c.to_string()).collect();
        let recorded = recorded(&contexts);
        let expected = [
            r#"{"ip":"189.203.45.0"}"#,
            r#"{"ip":"189.203.45.0"}"#,
            r#"{"ip":"189.203.45.0","locale":"es-MX","page":{"ip":"nested"}}"#,
            r#"{"ip":"189.203.45.0","page":"not an object"}"#,
        ];
        for (i, context) in contexts.iter().enumerate() {
            let want = expected.get(i).copied().unwrap_or(context.as_str());
            assert_eq!(recorded[i].as_deref(), Some(want), "{context}");
        }
    }
}
