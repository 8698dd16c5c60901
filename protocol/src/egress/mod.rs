//! Network egress policy: which addresses a function may connect to.
//!
//! The worker enforces the policy through Deno's permission model, which
//! shapes everything here:
//!
//! - Deny always beats allow and nothing can re-grant inside a denied range,
//!   so an operator "allow" inside a default-denied range is realised by
//!   cutting it out of the deny set (CIDR arithmetic), never by a grant.
//! - Deno re-checks every resolved address against the deny rules only
//!   (`check_net_resolved`), after mapping `::ffff:a.b.c.d` to IPv4. Other
//!   IPv6 spellings of an IPv4 address (compatible, NAT64, 6to4) reach the
//!   IPv4 host through a translator, so every IPv4 deny carries those
//!   embeddings as extra IPv6 rules.
//! - A deny rule names one port or all ports. "All ports but p" costs the
//!   worker one descriptor per port, hence the cap on such rules.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// The effective policy handed to a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPolicy {
    /// `None`: any host name or address not denied below. `Some`: only these
    /// (Deno `--allow-net` syntax), still subject to the deny rules.
    /// `Some(vec![])` means no host at all, which is NOT what an empty
    /// `allow_net` means to Deno: use [`NetPolicy::deno_allow_net`].
    pub allow_hosts: Option<Vec<String>>,
    pub deny: Vec<DenyRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyRule {
    /// CIDR text, e.g. `127.0.0.0/8` or `::ffff:127.0.0.0/104`.
    pub net: String,
    pub ports: PortSet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortSet {
    All,
    Only(Vec<u16>),
    AllExcept(Vec<u16>),
}

/// Most rules with [`PortSet::AllExcept`] a policy may hold: the worker
/// expands each into ~65k Deno descriptors.
pub const MAX_ALL_EXCEPT_RULES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("invalid egress rule {text:?}: {reason}")]
    InvalidRule { text: String, reason: &'static str },
    #[error("invalid allowed host {entry:?}: {reason}")]
    InvalidAllowEntry { entry: String, reason: &'static str },
    #[error(
        "the policy needs {count} deny rules that exclude ports, at most {max} are supported: \
         port-scoped allows inside a denied range are limited; allow whole hosts or fewer ports"
    )]
    TooManyPortExceptions { count: usize, max: usize },
}

/// One operator or function rule: a network and optionally a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub net: IpNet,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorRules {
    pub allow: Vec<EgressRule>,
    pub deny: Vec<EgressRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionRules {
    /// Host names or addresses in Deno `--allow-net` syntax.
    pub allow: Option<Vec<String>>,
    pub deny: Vec<EgressRule>,
}

impl FromStr for EgressRule {
    type Err = EgressError;

    /// Bare IPv6 never carries a port (`::1:8080` is itself an address);
    /// a port after IPv6 needs brackets: `[::1]:8080`, `[fe80::]/10:443`.
    fn from_str(text: &str) -> Result<Self, EgressError> {
        let err = |reason| EgressError::InvalidRule {
            text: text.to_owned(),
            reason,
        };
        let (ip, prefix, port): (IpAddr, Option<&str>, Option<&str>) =
            if let Some(rest) = text.strip_prefix('[') {
                let (addr, after) = rest.split_once(']').ok_or_else(|| err("missing ']'"))?;
                let ip: Ipv6Addr = addr.parse().map_err(|_| err("not an IPv6 address"))?;
                let (prefix, port) = match after.split_once(':') {
                    Some((prefix, port)) => (prefix, Some(port)),
                    None => (after, None),
                };
                let prefix = match prefix {
                    "" => None,
                    p => Some(
                        p.strip_prefix('/')
                            .ok_or_else(|| err("unexpected text after ']'"))?,
                    ),
                };
                (IpAddr::V6(ip), prefix, port)
            } else {
                let v6 = text.matches(':').count() >= 2;
                let (host, port) = match text.split_once(':') {
                    Some((host, port)) if !v6 => (host, Some(port)),
                    _ => (text, None),
                };
                let (addr, prefix) = match host.split_once('/') {
                    Some((addr, prefix)) => (addr, Some(prefix)),
                    None => (host, None),
                };
                let ip = if v6 {
                    addr.parse::<Ipv6Addr>().map(IpAddr::V6)
                } else {
                    addr.parse::<Ipv4Addr>().map(IpAddr::V4)
                };
                (
                    ip.map_err(|_| err("not an IP address or CIDR"))?,
                    prefix,
                    port,
                )
            };
        let max_len = if ip.is_ipv4() { 32 } else { 128 };
        let len = match prefix {
            None => max_len,
            Some(p) => parse_decimal(p)
                .and_then(|n| u8::try_from(n).ok())
                .filter(|&n| n <= max_len)
                .ok_or_else(|| err("invalid prefix length"))?,
        };
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or_else(|| err("port must be 1-65535"))?),
        };
        let net = IpNet::new(ip, len)
            .map_err(|_| err("invalid prefix length"))?
            .trunc();
        Ok(EgressRule { net, port })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.net.prefix_len() == self.net.max_prefix_len();
        match (self.net, self.port) {
            (IpNet::V4(n), None) if host => write!(f, "{}", n.addr()),
            (IpNet::V4(n), Some(p)) if host => write!(f, "{}:{p}", n.addr()),
            (IpNet::V4(n), None) => write!(f, "{n}"),
            (IpNet::V4(n), Some(p)) => write!(f, "{n}:{p}"),
            (IpNet::V6(n), None) if host => write!(f, "{}", n.addr()),
            (IpNet::V6(n), Some(p)) if host => write!(f, "[{}]:{p}", n.addr()),
            (IpNet::V6(n), None) => write!(f, "{n}"),
            (IpNet::V6(n), Some(p)) => write!(f, "[{}]/{}:{p}", n.addr(), n.prefix_len()),
        }
    }
}

/// Digits only: `+8`, ` 8` and `08` are rejected, so a rule has one spelling.
fn parse_decimal(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !canonical || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// Port 0 cannot be connected to, so a rule naming it is a mistake.
fn parse_port(s: &str) -> Option<u16> {
    parse_decimal(s)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
}

/// Which ports of a network a deny rule covers; the working form of
/// [`PortSet`] (sets keep the port lists sorted and unique).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ports {
    All,
    Only(BTreeSet<u16>),
    AllExcept(BTreeSet<u16>),
}

impl Ports {
    fn one(port: Option<u16>) -> Ports {
        match port {
            None => Ports::All,
            Some(p) => Ports::Only(BTreeSet::from([p])),
        }
    }

    fn without(&self, port: u16) -> Ports {
        match self {
            Ports::All => Ports::AllExcept(BTreeSet::from([port])),
            Ports::Only(s) => Ports::Only(s.iter().copied().filter(|&p| p != port).collect()),
            Ports::AllExcept(s) => Ports::AllExcept(s.iter().copied().chain([port]).collect()),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Ports::All => false,
            Ports::Only(s) => s.is_empty(),
            Ports::AllExcept(s) => s.len() > usize::from(u16::MAX),
        }
    }

    fn covers(&self, other: &Ports) -> bool {
        match (self, other) {
            (Ports::All, _) => true,
            (Ports::Only(a), Ports::Only(b)) => b.is_subset(a),
            (Ports::AllExcept(a), Ports::Only(b)) => a.is_disjoint(b),
            (Ports::AllExcept(a), Ports::AllExcept(b)) => a.is_subset(b),
            // Only a full port list could cover All/AllExcept; not worth it.
            _ => false,
        }
    }
}

impl From<Ports> for PortSet {
    fn from(p: Ports) -> PortSet {
        match p {
            Ports::All => PortSet::All,
            Ports::Only(s) => PortSet::Only(s.into_iter().collect()),
            Ports::AllExcept(s) => PortSet::AllExcept(s.into_iter().collect()),
        }
    }
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::All => true,
            PortSet::Only(ps) => ps.contains(&port),
            PortSet::AllExcept(ps) => !ps.contains(&port),
        }
    }
}

/// Loopback, "this network" and link-local (cloud metadata at
/// 169.254.169.254, fd00:ec2::254 on AWS). Private ranges stay open:
/// functions call in-cluster services.
const DEFAULT_DENY: [&str; 7] = [
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "::1/128",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
];

fn builtin_net(text: &str) -> IpNet {
    text.parse().expect("built-in network")
}

/// `net` together with the IPv6 networks that reach the same IPv4 hosts.
fn with_embeddings(net: IpNet) -> Vec<IpNet> {
    let IpNet::V4(v4) = net else {
        return vec![net];
    };
    let addr = u128::from(u32::from(v4.network()));
    let len = v4.prefix_len();
    let v6 = |bits: u128, len: u8| {
        IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).expect("prefix within 128"))
    };
    vec![
        net,
        v6(0xffff << 32 | addr, 96 + len),
        v6(addr, 96 + len),
        v6(0x64_ff9b << 96 | addr, 96 + len),
        v6(0x2002 << 112 | addr << 80, 16 + len),
    ]
}

/// Deno never matches an IPv6 rule against an IPv4-mapped address (it maps
/// the address to IPv4 first), so such a rule would silently do nothing.
fn unmap_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).expect("prefix within 32")),
            None => net,
        },
        _ => net,
    }
}

fn unmap_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The addresses of `a` that are not in `b`, as at most 32 (IPv4) or 128
/// (IPv6) disjoint networks.
pub fn subtract(a: IpNet, b: IpNet) -> Vec<IpNet> {
    let (a, b) = (a.trunc(), b.trunc());
    if !a.contains(&b) {
        return if b.contains(&a) { vec![] } else { vec![a] };
    }
    // Halve towards `b`, keeping each half that does not hold it.
    let mut out = Vec::new();
    let mut cur = a;
    while cur.prefix_len() < b.prefix_len() {
        let mut halves = cur.subnets(cur.prefix_len() + 1).expect("prefix below max");
        let (lo, hi) = (
            halves.next().expect("two halves"),
            halves.next().expect("two halves"),
        );
        let (keep, next) = if lo.contains(&b) { (hi, lo) } else { (lo, hi) };
        out.push(keep);
        cur = next;
    }
    out
}

type DenySet = Vec<(IpNet, Ports)>;

/// Cuts `hole` out of every rule; with a port, only that port is cut.
fn carve(set: DenySet, hole: IpNet, port: Option<u16>) -> DenySet {
    let mut out = Vec::with_capacity(set.len());
    for (net, ports) in set {
        let overlap = if hole.contains(&net) {
            net
        } else if net.contains(&hole) {
            hole
        } else {
            out.push((net, ports));
            continue;
        };
        out.extend(subtract(net, hole).into_iter().map(|n| (n, ports.clone())));
        if let Some(p) = port {
            out.push((overlap, ports.without(p)));
        }
    }
    out
}

fn add_deny(set: &mut DenySet, net: IpNet, ports: Ports) {
    set.extend(
        with_embeddings(unmap_net(net))
            .into_iter()
            .map(|n| (n, ports.clone())),
    );
}

fn check_rule(rule: &EgressRule) -> Result<(), EgressError> {
    if rule.port == Some(0) {
        return Err(EgressError::InvalidRule {
            text: rule.to_string(),
            reason: "port must be 1-65535",
        });
    }
    Ok(())
}

/// The policy for one function. Operator deny beats operator allow, which
/// beats the default deny; the function's own rules can only narrow.
pub fn effective(
    op: &OperatorRules,
    supervisor: &[SocketAddr],
    f: &FunctionRules,
) -> Result<NetPolicy, EgressError> {
    for rule in op.allow.iter().chain(&op.deny).chain(&f.deny) {
        check_rule(rule)?;
    }
    let allow_hosts = match &f.allow {
        None => None,
        Some(list) => {
            for entry in list {
                validate_allow_entry(entry)?;
            }
            Some(list.clone())
        }
    };

    let mut set: DenySet = DEFAULT_DENY
        .iter()
        .flat_map(|n| with_embeddings(builtin_net(n)))
        .map(|n| (n, Ports::All))
        .collect();
    for rule in &op.allow {
        for hole in with_embeddings(unmap_net(rule.net)) {
            set = carve(set, hole, rule.port);
        }
    }
    for rule in &op.deny {
        add_deny(&mut set, rule.net, Ports::one(rule.port));
    }
    for addr in supervisor {
        let ip = unmap_ip(addr.ip());
        // Only an allow naming exactly this host and port opens the
        // supervisor: a range allow is meant for other services on it.
        let opened = op
            .allow
            .iter()
            .any(|r| r.port == Some(addr.port()) && unmap_net(r.net) == IpNet::from(ip));
        if !opened {
            add_deny(&mut set, IpNet::from(ip), Ports::one(Some(addr.port())));
        }
    }
    for rule in &f.deny {
        add_deny(&mut set, rule.net, Ports::one(rule.port));
    }

    let deny = minimise(set);
    let count = deny
        .iter()
        .filter(|r| matches!(r.ports, PortSet::AllExcept(_)))
        .count();
    if count > MAX_ALL_EXCEPT_RULES {
        return Err(EgressError::TooManyPortExceptions {
            count,
            max: MAX_ALL_EXCEPT_RULES,
        });
    }
    Ok(NetPolicy { allow_hosts, deny })
}

/// Fewest rules with the same meaning: networks aggregated per port set,
/// rules inside a broader rule dropped, in a stable order.
fn minimise(set: DenySet) -> Vec<DenyRule> {
    let mut groups: Vec<(Ports, Vec<IpNet>)> = Vec::new();
    for (net, ports) in set.into_iter().filter(|(_, p)| !p.is_empty()) {
        match groups.iter_mut().find(|(p, _)| *p == ports) {
            Some((_, nets)) => nets.push(net),
            None => groups.push((ports, vec![net])),
        }
    }
    let rules: Vec<(IpNet, Ports)> = groups
        .into_iter()
        .flat_map(|(ports, nets)| {
            IpNet::aggregate(&nets)
                .into_iter()
                .map(move |n| (n, ports.clone()))
        })
        .collect();
    // Equal port sets were aggregated above, so a rule never covers itself
    // here and two rules never cover each other.
    let mut kept: Vec<(IpNet, Ports)> = rules
        .iter()
        .filter(|(n, p)| {
            !rules
                .iter()
                .any(|(m, q)| q != p && m.contains(n) && q.covers(p))
        })
        .cloned()
        .collect();
    kept.sort();
    kept.into_iter()
        .map(|(n, p)| DenyRule {
            net: n.to_string(),
            ports: p.into(),
        })
        .collect()
}

impl NetPolicy {
    /// Whether a connection to `ip:port` is refused, the way Deno checks an
    /// address after resolution. Host names in `allow_hosts` are a separate,
    /// earlier check and are not consulted.
    pub fn denies(&self, ip: IpAddr, port: u16) -> bool {
        let ip = unmap_ip(ip);
        self.deny
            .iter()
            .any(|rule| match rule.net.parse::<IpNet>() {
                Ok(net) => net.contains(&ip) && rule.ports.contains(port),
                // The worker cannot enforce a rule it cannot read; fail closed.
                Err(_) => true,
            })
    }

    /// The deny rules for people: `127.0.0.0/8`, `127.0.0.1/32:8080`,
    /// `127.0.0.0/8 except ports 8080,9090`.
    pub fn deny_strings(&self) -> Vec<String> {
        let list = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        self.deny
            .iter()
            .map(|rule| match &rule.ports {
                PortSet::All => rule.net.clone(),
                PortSet::Only(ps) if rule.net.contains(':') => {
                    let (addr, len) = rule.net.split_once('/').unwrap_or((&rule.net, "128"));
                    format!("[{addr}]/{len}:{}", list(ps))
                }
                PortSet::Only(ps) => format!("{}:{}", rule.net, list(ps)),
                PortSet::AllExcept(ps) => format!("{} except ports {}", rule.net, list(ps)),
            })
            .collect()
    }

    /// The `allow_net` to give Deno, where `Some(vec![])` grants every host
    /// and `None` grants none: the opposite of `allow_hosts`' reading.
    pub fn deno_allow_net(&self) -> Option<Vec<String>> {
        match &self.allow_hosts {
            None => Some(Vec::new()),
            Some(hosts) if hosts.is_empty() => None,
            Some(hosts) => Some(hosts.clone()),
        }
    }
}

/// Accepts only what Deno's `--allow-net` parser accepts and can match:
/// Deno fails to start on the rest, or keeps an entry no URL host equals.
fn validate_allow_entry(entry: &str) -> Result<(), EgressError> {
    let err = |reason| EgressError::InvalidAllowEntry {
        entry: entry.to_owned(),
        reason,
    };
    if entry.is_empty() {
        return Err(err("empty"));
    }
    if entry.contains("://") {
        return Err(err("a URL, not a host; write host or host:port"));
    }
    if entry.starts_with("unix:") || entry.starts_with("vsock:") {
        return Err(err("only TCP/UDP hosts can be allowed"));
    }
    if entry
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(err("contains whitespace or control characters"));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(|| err("missing ']'"))?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| err("not an IPv6 address"))?;
        match after {
            "" => return Ok(()),
            _ if after.starts_with('/') => {
                return Err(err("IPv6 networks cannot be allowed per function"))
            }
            _ => {
                let port = after
                    .strip_prefix(':')
                    .ok_or_else(|| err("text after ']'"))?;
                (None, port)
            }
        }
    } else if entry.matches(':').count() >= 2 {
        return Err(err("IPv6 addresses need brackets: [addr] or [addr]:port"));
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (Some(host), port),
            None => (Some(entry), ""),
        }
    };
    if !port.is_empty() || entry.ends_with(':') {
        parse_port(port).ok_or_else(|| err("port must be 1-65535"))?;
    }
    let Some(host) = host else {
        return Ok(());
    };
    if host.contains('/') {
        return host.parse::<Ipv4Net>().map(drop).map_err(|_| {
            err("not an IPv4 network (IPv6 networks cannot be allowed per function)")
        });
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    // URL hosts arrive in canonical dotted form, so `127.1` would match none.
    if parse_host_spelling(host).is_some() {
        return Err(err("write the IPv4 address as four decimal numbers"));
    }
    if !is_host_name(host.strip_prefix("*.").unwrap_or(host)) {
        return Err(err("not a host name, *.domain, IPv4 address or network"));
    }
    Ok(())
}

fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let labels: Vec<&str> = name.split('.').collect();
    // A numeric last label makes URL parsers read the name as IPv4.
    let numeric_tail = labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()) || parse_ipv4_part(l).is_some());
    name.len() <= 253 && labels.iter().all(|l| label_ok(l)) && !numeric_tail
}

/// The address `host` denotes to `inet_aton` (and so `getaddrinfo`) or to
/// the WHATWG URL parser: IPv4 in 1-4 parts of decimal, `0x` hex or
/// leading-zero octal, or IPv6 with or without brackets. `None` for names.
pub fn parse_host_spelling(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return parse_ipv6_host(inner).map(IpAddr::V6);
    }
    if host.contains(':') {
        return parse_ipv6_host(host).map(IpAddr::V6);
    }
    parse_ipv4_loose(host).map(IpAddr::V4)
}

/// A zone index does not change the address.
fn parse_ipv6_host(s: &str) -> Option<Ipv6Addr> {
    s.split_once('%').map_or(s, |(addr, _)| addr).parse().ok()
}

fn parse_ipv4_loose(s: &str) -> Option<Ipv4Addr> {
    // WHATWG allows one trailing dot.
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts = s
        .split('.')
        .map(parse_ipv4_part)
        .collect::<Option<Vec<u64>>>()?;
    let (&last, init) = parts.split_last()?;
    if parts.len() > 4 || init.iter().any(|&n| n > 255) {
        return None;
    }
    // The last part fills every byte the others left.
    let last_bits = 8 * (5 - parts.len() as u32);
    if last >= 1 << last_bits {
        return None;
    }
    let addr = init
        .iter()
        .enumerate()
        .fold(last, |acc, (i, &n)| acc | n << (24 - 8 * i));
    Some(Ipv4Addr::from(u32::try_from(addr).ok()?))
}

fn parse_ipv4_part(p: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
        // WHATWG reads a bare `0x` as zero (glibc only before a dot).
        if hex.is_empty() {
            return Some(0);
        }
        (hex, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Overflow means far above any part's limit.
    u64::from_str_radix(digits, radix).ok()
}
