use super::*;

const SAMPLE_PORTS: [u16; 7] = [1, 22, 80, 443, 5432, 8080, 65535];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule(s: &str) -> EgressRule {
    s.parse().unwrap()
}

fn rules(list: &[&str]) -> Vec<EgressRule> {
    list.iter().map(|s| rule(s)).collect()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn allow(list: &[&str]) -> OperatorRules {
    OperatorRules {
        allow: rules(list),
        deny: vec![],
    }
}

fn policy(op: &OperatorRules, supervisor: &[&str], f: &FunctionRules) -> NetPolicy {
    let supervisor: Vec<SocketAddr> = supervisor.iter().map(|s| sock(s)).collect();
    let p = effective(op, &supervisor, f).unwrap();
    assert_minimal(&p);
    p
}

fn default_policy() -> NetPolicy {
    policy(&OperatorRules::default(), &[], &FunctionRules::default())
}

fn assert_denied_all_ports(p: &NetPolicy, addr: IpAddr) {
    for port in SAMPLE_PORTS {
        assert!(p.denies(addr, port), "{addr}:{port} should be denied");
    }
}

fn assert_allowed_all_ports(p: &NetPolicy, addr: IpAddr) {
    for port in SAMPLE_PORTS {
        assert!(!p.denies(addr, port), "{addr}:{port} should be allowed");
    }
}

/// No rule is redundant: each port set's networks are already aggregated
/// and no rule lies inside another that covers its ports.
fn assert_minimal(p: &NetPolicy) {
    let parsed: Vec<(IpNet, Ports)> = p
        .deny
        .iter()
        .map(|r| {
            let ports = match &r.ports {
                PortSet::All => Ports::All,
                PortSet::Only(ps) => Ports::Only(ps.iter().copied().collect()),
                PortSet::AllExcept(ps) => Ports::AllExcept(ps.iter().copied().collect()),
            };
            assert!(!ports.is_empty(), "empty rule {r:?}");
            (r.net.parse::<IpNet>().unwrap(), ports)
        })
        .collect();
    for (i, (n, ps)) in parsed.iter().enumerate() {
        assert_eq!(*n, n.trunc(), "untruncated {n}");
        let group: Vec<IpNet> = parsed
            .iter()
            .filter(|(_, q)| q == ps)
            .map(|(m, _)| *m)
            .collect();
        assert_eq!(
            IpNet::aggregate(&group).len(),
            group.len(),
            "unaggregated {ps:?}"
        );
        for (j, (m, qs)) in parsed.iter().enumerate() {
            assert!(
                i == j || !(m.contains(n) && qs.covers(ps)),
                "{n} {ps:?} inside {m} {qs:?}"
            );
        }
    }
}

#[test]
fn default_denies_loopback_unspecified_link_local_and_metadata_in_every_form() {
    let p = default_policy();
    for a in [
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0",
        "0.1.2.3",
        "169.254.169.254",
        "169.254.0.1",
        "::1",
        "::",
        "fe80::1",
        "febf:ffff::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::169.254.169.254",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "2002:0:1::",
    ] {
        assert_denied_all_ports(&p, ip(a));
    }
}

#[test]
fn default_denies_every_numeric_spelling_of_loopback() {
    let p = default_policy();
    for s in [
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "127.0.1",
        "017700000001",
        "[::ffff:7f00:1]",
        "[::1]",
        "::ffff:127.0.0.1",
        "0x7F.0.0.1",
        "127.0.0.1.",
        "0xa9.0xfe.0xa9.0xfe",
        "0",
    ] {
        let addr = parse_host_spelling(s).unwrap_or_else(|| panic!("{s} not parsed"));
        assert_denied_all_ports(&p, addr);
    }
}

#[test]
fn default_allows_private_public_and_their_embeddings() {
    let p = default_policy();
    for a in [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "8.8.8.8",
        "126.255.255.255",
        "128.0.0.0",
        "1.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "2001:db8::1",
        "::ffff:10.1.2.3",
        "64:ff9b::808:808",
        "2002:a01:203::1",
        "fd00:ec2::253",
        "fec0::1",
        "::2:0:0",
    ] {
        assert_allowed_all_ports(&p, ip(a));
    }
}

#[test]
fn default_policy_lists_each_range_and_its_embeddings_for_all_ports() {
    let p = default_policy();
    assert_eq!(p.allow_hosts, None);
    assert!(p.deny.iter().all(|r| r.ports == PortSet::All));
    let shown = p.deny_strings();
    for n in [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::ffff:127.0.0.0/104",
        "::7f00:0/104",
        "::/104",
        "64:ff9b::7f00:0/104",
        "64:ff9b::a9fe:0/112",
        "2002::/24",
        "2002:7f00::/24",
        "2002:a9fe::/32",
        "fe80::/10",
        "fd00:ec2::254/128",
    ] {
        assert!(shown.iter().any(|s| s == n), "{n} missing from {shown:?}");
    }
    // ::1 and :: lie inside ::/104, the compatible form of 0.0.0.0/8.
    assert!(!shown.iter().any(|s| s == "::1/128" || s == "::/128"));
}

#[test]
fn embeddings_of_an_ipv4_network() {
    let got: Vec<String> = with_embeddings(net("127.0.0.0/8"))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "127.0.0.0/8",
            "::ffff:127.0.0.0/104",
            "::7f00:0/104",
            "64:ff9b::7f00:0/104",
            "2002:7f00::/24"
        ]
    );
    let host: Vec<String> = with_embeddings(net("169.254.169.254/32"))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        host,
        [
            "169.254.169.254/32",
            "::ffff:169.254.169.254/128",
            "::a9fe:a9fe/128",
            "64:ff9b::a9fe:a9fe/128",
            "2002:a9fe:a9fe::/48"
        ]
    );
    assert_eq!(with_embeddings(net("fe80::/10")), vec![net("fe80::/10")]);
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn operator_allow_of_a_host_opens_it_and_its_embeddings_on_every_port() {
    let p = policy(&allow(&["127.0.0.1/32"]), &[], &FunctionRules::default());
    for a in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::7f00:1",
        "::127.0.0.1",
        "2002:7f00:1::9",
    ] {
        assert_allowed_all_ports(&p, ip(a));
    }
    for a in [
        "127.0.0.2",
        "127.0.0.0",
        "127.255.255.255",
        "64:ff9b::7f00:2",
        "2002:7f00:2::",
    ] {
        assert_denied_all_ports(&p, ip(a));
    }
    assert_denied_all_ports(&p, ip("169.254.169.254"));
}

#[test]
fn supervisor_address_stays_denied_under_a_host_allow() {
    let p = policy(
        &allow(&["127.0.0.1/32"]),
        &["127.0.0.1:8080"],
        &FunctionRules::default(),
    );
    assert!(p.denies(ip("127.0.0.1"), 8080));
    assert!(p.denies(ip("::ffff:127.0.0.1"), 8080));
    assert!(p.denies(ip("64:ff9b::7f00:1"), 8080));
    assert!(!p.denies(ip("127.0.0.1"), 8081));
    assert!(!p.denies(ip("127.0.0.1"), 443));
    assert!(p.deny_strings().contains(&"127.0.0.1/32:8080".to_owned()));
}

#[test]
fn port_scoped_allow_opens_only_that_port() {
    let p = policy(
        &allow(&["127.0.0.1/32:8080"]),
        &[],
        &FunctionRules::default(),
    );
    assert!(!p.denies(ip("127.0.0.1"), 8080));
    assert!(!p.denies(ip("::ffff:127.0.0.1"), 8080));
    assert!(!p.denies(ip("64:ff9b::7f00:1"), 8080));
    assert!(p.denies(ip("127.0.0.1"), 22));
    assert!(p.denies(ip("127.0.0.1"), 8081));
    assert!(p.denies(ip("127.0.0.2"), 8080));
    assert!(p
        .deny_strings()
        .contains(&"127.0.0.1/32 except ports 8080".to_owned()));
    let except = p
        .deny
        .iter()
        .filter(|r| matches!(r.ports, PortSet::AllExcept(_)))
        .count();
    assert_eq!(except, 5, "the host and its four embeddings");
}

#[test]
fn exact_host_and_port_allow_opens_the_supervisor_address() {
    let op = allow(&["127.0.0.1/32:8080"]);
    let p = policy(
        &op,
        &["127.0.0.1:8080", "127.0.0.1:9090"],
        &FunctionRules::default(),
    );
    assert!(!p.denies(ip("127.0.0.1"), 8080));
    assert!(p.denies(ip("127.0.0.1"), 9090));
    assert!(p.denies(ip("127.0.0.1"), 22));
}

#[test]
fn exact_ipv6_host_and_port_allow_opens_the_supervisor_address() {
    let op = allow(&["[::1]:8080"]);
    let p = policy(
        &op,
        &["[::1]:8080", "[::1]:9090"],
        &FunctionRules::default(),
    );
    assert!(!p.denies(ip("::1"), 8080));
    assert!(p.denies(ip("::1"), 9090));
    assert!(p.denies(ip("::1"), 22));
    assert!(p.denies(ip("::2"), 8080));
}

#[test]
fn range_allows_do_not_open_the_supervisor_address() {
    for op in [
        allow(&["127.0.0.0/8"]),
        allow(&["127.0.0.0/8:8080"]),
        allow(&["127.0.0.1/32:80"]),
    ] {
        let p = policy(&op, &["127.0.0.1:8080"], &FunctionRules::default());
        assert!(p.denies(ip("127.0.0.1"), 8080), "{op:?}");
        if op.allow[0].net.prefix_len() == 8 {
            assert!(!p.denies(ip("127.0.0.2"), 8080), "{op:?}");
        }
    }
}

#[test]
fn supervisor_addresses_are_denied_on_their_port_only() {
    // What the caller passes for a supervisor bound to 0.0.0.0:8080 and [::]:8080.
    let sup = [
        "127.0.0.1:8080",
        "10.0.0.5:8080",
        "192.168.1.7:8080",
        "[::1]:8080",
        "[2001:db8::5]:8080",
    ];
    let p = policy(&OperatorRules::default(), &sup, &FunctionRules::default());
    for a in [
        "10.0.0.5",
        "192.168.1.7",
        "2001:db8::5",
        "::ffff:10.0.0.5",
        "64:ff9b::a00:5",
    ] {
        assert!(p.denies(ip(a), 8080), "{a}");
        assert!(!p.denies(ip(a), 443), "{a}");
    }
    assert!(!p.denies(ip("10.0.0.6"), 8080));
    assert!(!p.denies(ip("2001:db8::6"), 8080));
    // Already inside the default deny: no extra rule.
    assert!(!p.deny_strings().iter().any(|s| s.starts_with("127.0.0.1")));
    assert!(p
        .deny_strings()
        .contains(&"[2001:db8::5]/128:8080".to_owned()));
}

#[test]
fn ipv4_mapped_supervisor_address_is_denied_as_ipv4() {
    let p = policy(
        &OperatorRules::default(),
        &["[::ffff:10.0.0.5]:8080"],
        &FunctionRules::default(),
    );
    assert!(p.denies(ip("10.0.0.5"), 8080));
    assert!(p.denies(ip("64:ff9b::a00:5"), 8080));
    assert!(p.deny_strings().contains(&"10.0.0.5/32:8080".to_owned()));
}

#[test]
fn operator_deny_beats_operator_allow() {
    let op = OperatorRules {
        allow: rules(&["169.254.169.254/32"]),
        deny: rules(&["169.254.0.0/16"]),
    };
    let p = policy(&op, &[], &FunctionRules::default());
    for a in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::",
    ] {
        assert_denied_all_ports(&p, ip(a));
    }
}

#[test]
fn operator_deny_with_port_denies_that_port_only() {
    let op = OperatorRules {
        allow: vec![],
        deny: rules(&["10.0.0.0/8:5432"]),
    };
    let p = policy(&op, &[], &FunctionRules::default());
    for a in [
        "10.1.1.1",
        "::ffff:10.1.1.1",
        "::10.1.1.1",
        "64:ff9b::a01:101",
        "2002:a01:101::",
    ] {
        assert!(p.denies(ip(a), 5432), "{a}");
        assert!(!p.denies(ip(a), 443), "{a}");
    }
    assert!(p.deny_strings().contains(&"10.0.0.0/8:5432".to_owned()));
    assert!(p
        .deny_strings()
        .contains(&"[64:ff9b::a00:0]/104:5432".to_owned()));
}

#[test]
fn operator_deny_written_as_ipv4_mapped_is_applied_to_ipv4() {
    let op = OperatorRules {
        allow: vec![],
        deny: rules(&["::ffff:10.0.0.0/104"]),
    };
    let p = policy(&op, &[], &FunctionRules::default());
    assert_denied_all_ports(&p, ip("10.9.9.9"));
    assert_denied_all_ports(&p, ip("64:ff9b::a09:909"));
    assert!(p.deny_strings().contains(&"10.0.0.0/8".to_owned()));
}

#[test]
fn operator_allow_written_as_ipv4_mapped_opens_the_ipv4_host() {
    let p = policy(
        &allow(&["::ffff:127.0.0.1"]),
        &[],
        &FunctionRules::default(),
    );
    assert_allowed_all_ports(&p, ip("127.0.0.1"));
    assert_allowed_all_ports(&p, ip("64:ff9b::7f00:1"));
}

#[test]
fn operator_allow_of_a_whole_default_range_removes_it() {
    let p = policy(
        &allow(&["169.254.0.0/16", "fe80::/10"]),
        &[],
        &FunctionRules::default(),
    );
    assert_allowed_all_ports(&p, ip("169.254.169.254"));
    assert_allowed_all_ports(&p, ip("2002:a9fe:1::"));
    assert_allowed_all_ports(&p, ip("fe80::1"));
    assert!(!p
        .deny_strings()
        .iter()
        .any(|s| s.contains("a9fe") || s.starts_with("169.254")));
    assert_denied_all_ports(&p, ip("127.0.0.1"));
}

#[test]
fn port_allows_on_the_same_host_merge() {
    let op = allow(&["127.0.0.1/32:8080", "127.0.0.1:9090"]);
    let p = policy(&op, &[], &FunctionRules::default());
    assert!(!p.denies(ip("127.0.0.1"), 8080));
    assert!(!p.denies(ip("127.0.0.1"), 9090));
    assert!(p.denies(ip("127.0.0.1"), 8081));
    assert!(p
        .deny_strings()
        .contains(&"127.0.0.1/32 except ports 8080,9090".to_owned()));
    assert_eq!(
        p.deny
            .iter()
            .filter(|r| matches!(r.ports, PortSet::AllExcept(_)))
            .count(),
        5
    );
}

#[test]
fn overlapping_port_allows_combine_per_address() {
    let op = allow(&["127.0.0.1/32:8080", "127.0.0.0/31:9090"]);
    let p = policy(&op, &[], &FunctionRules::default());
    assert!(!p.denies(ip("127.0.0.1"), 8080));
    assert!(!p.denies(ip("127.0.0.1"), 9090));
    assert!(!p.denies(ip("127.0.0.0"), 9090));
    assert!(p.denies(ip("127.0.0.0"), 8080));
    assert!(p.denies(ip("127.0.0.2"), 9090));
}

#[test]
fn whole_host_allow_after_a_port_allow_leaves_no_exception_rule() {
    let p = policy(
        &allow(&["127.0.0.1:8080", "127.0.0.1"]),
        &[],
        &FunctionRules::default(),
    );
    assert_allowed_all_ports(&p, ip("127.0.0.1"));
    assert!(p.deny.iter().all(|r| r.ports == PortSet::All));
}

#[test]
fn port_allows_outside_the_deny_set_cost_nothing() {
    let p = policy(
        &allow(&["10.0.0.0/8:443", "8.8.8.8:53"]),
        &[],
        &FunctionRules::default(),
    );
    assert_eq!(p, default_policy());
}

#[test]
fn too_many_port_exceptions_is_an_error() {
    // Each port-scoped IPv4 host costs five rules: itself and four embeddings.
    let three = allow(&["127.0.0.1:80", "127.0.0.3:80", "127.0.0.5:80"]);
    assert!(effective(&three, &[], &FunctionRules::default()).is_ok());
    let four = allow(&[
        "127.0.0.1:80",
        "127.0.0.3:80",
        "127.0.0.5:80",
        "127.0.0.7:80",
    ]);
    let err = effective(&four, &[], &FunctionRules::default()).unwrap_err();
    assert_eq!(
        err,
        EgressError::TooManyPortExceptions {
            count: 20,
            max: MAX_ALL_EXCEPT_RULES
        }
    );
    assert!(err
        .to_string()
        .contains("port-scoped allows inside a denied range are limited"));
    // IPv6 hosts have no embeddings.
    let v6: Vec<String> = (1..=16).map(|i| format!("[fe80::{i:x}]:443")).collect();
    let v6 = allow(&v6.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(effective(&v6, &[], &FunctionRules::default()).is_ok());
}

#[test]
fn function_deny_narrows() {
    let f = FunctionRules {
        allow: None,
        deny: rules(&["10.0.0.0/8", "192.168.1.1:443"]),
    };
    let p = policy(&OperatorRules::default(), &[], &f);
    assert_denied_all_ports(&p, ip("10.1.2.3"));
    assert_denied_all_ports(&p, ip("64:ff9b::a01:203"));
    assert!(p.denies(ip("192.168.1.1"), 443));
    assert!(!p.denies(ip("192.168.1.1"), 80));
    assert_allowed_all_ports(&p, ip("172.16.0.1"));
}

#[test]
fn function_deny_applies_inside_an_operator_allow() {
    let f = FunctionRules {
        allow: None,
        deny: rules(&["127.0.0.1"]),
    };
    let p = policy(&allow(&["127.0.0.0/8"]), &[], &f);
    assert_denied_all_ports(&p, ip("127.0.0.1"));
    assert_allowed_all_ports(&p, ip("127.0.0.2"));
}

#[test]
fn function_allow_list_never_opens_a_denied_range() {
    let hosts = vec![
        "127.0.0.1".to_owned(),
        "169.254.0.0/16".to_owned(),
        "localhost:8080".to_owned(),
    ];
    let f = FunctionRules {
        allow: Some(hosts.clone()),
        deny: vec![],
    };
    let p = policy(&OperatorRules::default(), &[], &f);
    assert_eq!(p.allow_hosts, Some(hosts));
    assert_eq!(p.deny, default_policy().deny);
}

#[test]
fn function_allow_accepts_deno_host_syntax() {
    for entry in [
        "example.com",
        "Example.COM",
        "example.com.",
        "api.example.com:443",
        "*.example.com",
        "*.example.com:8443",
        "localhost",
        "my_service.svc.cluster.local:8080",
        "xn--bcher-kva.example",
        "0x7f.example.com",
        "123.example.com",
        "example.0xg",
        "1.2.3.4",
        "1.2.3.4:80",
        "10.0.0.0/8",
        "10.0.0.0/8:5432",
        "[::1]",
        "[2001:db8::1]:443",
        "[::ffff:10.0.0.1]",
    ] {
        let f = FunctionRules {
            allow: Some(vec![entry.to_owned()]),
            deny: vec![],
        };
        assert!(
            effective(&OperatorRules::default(), &[], &f).is_ok(),
            "{entry}"
        );
    }
}

#[test]
fn function_allow_rejects_what_deno_cannot_parse_or_match() {
    for entry in [
        "",
        " example.com",
        "example.com ",
        "exa mple.com",
        "http://example.com",
        "https://example.com/path",
        "ftp://example.com",
        "unix:/var/run/docker.sock",
        "vsock:3:1024",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:http",
        "example.com:80:81",
        "::1",
        "2001:db8::1",
        "fe80::/10",
        "[fe80::]/10",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:0",
        "[not-ip]",
        "[fe80::1%eth0]",
        "*",
        "*.",
        "*example.com",
        "a.*.example.com",
        "-bad.example.com",
        "bad-.example.com",
        "a..b",
        ".example.com",
        "exa$mple.com",
        "example.com/path",
        "10.0.0.0/33",
        "10.0.0.0/x",
        "127.1",
        "0x7f.0.0.1",
        "2130706433",
        "0177.0.0.1",
        "1.2.3.256",
        "1.2.3.4.5",
        "example.123",
        "example.0x1f",
        "1.2.3.4.",
        &format!("{}.com", "a".repeat(64)),
        &format!("{}com", "a.".repeat(127)),
    ] {
        let f = FunctionRules {
            allow: Some(vec!["ok.example".to_owned(), entry.to_owned()]),
            deny: vec![],
        };
        match effective(&OperatorRules::default(), &[], &f) {
            Err(EgressError::InvalidAllowEntry { entry: e, .. }) => assert_eq!(e, entry),
            other => panic!("{entry:?} gave {other:?}"),
        }
    }
}

#[test]
fn allow_entry_error_names_the_entry() {
    let f = FunctionRules {
        allow: Some(vec!["http://x.example".to_owned()]),
        deny: vec![],
    };
    let err = effective(&OperatorRules::default(), &[], &f).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"http://x.example\"") && msg.contains("URL"),
        "{msg}"
    );
}

#[test]
fn empty_function_allow_list_means_no_host_even_to_deno() {
    let f = FunctionRules {
        allow: Some(vec![]),
        deny: vec![],
    };
    let p = policy(&OperatorRules::default(), &[], &f);
    assert_eq!(p.allow_hosts, Some(vec![]));
    assert_eq!(p.deno_allow_net(), None);
    assert_eq!(default_policy().deno_allow_net(), Some(vec![]));
    let some = NetPolicy {
        allow_hosts: Some(vec!["a.example".into()]),
        deny: vec![],
    };
    assert_eq!(some.deno_allow_net(), Some(vec!["a.example".to_owned()]));
}

#[test]
fn zero_port_in_a_constructed_rule_is_rejected() {
    let bad = EgressRule {
        net: net("10.0.0.0/8"),
        port: Some(0),
    };
    for op in [
        OperatorRules {
            allow: vec![bad],
            deny: vec![],
        },
        OperatorRules {
            allow: vec![],
            deny: vec![bad],
        },
    ] {
        let err = effective(&op, &[], &FunctionRules::default()).unwrap_err();
        assert!(matches!(err, EgressError::InvalidRule { .. }), "{err}");
    }
    let f = FunctionRules {
        allow: None,
        deny: vec![bad],
    };
    assert!(effective(&OperatorRules::default(), &[], &f).is_err());
}

#[test]
fn deny_strings_format() {
    let p = NetPolicy {
        allow_hosts: None,
        deny: vec![
            DenyRule {
                net: "127.0.0.0/8".into(),
                ports: PortSet::All,
            },
            DenyRule {
                net: "127.0.0.1/32".into(),
                ports: PortSet::Only(vec![8080]),
            },
            DenyRule {
                net: "127.0.0.0/8".into(),
                ports: PortSet::AllExcept(vec![8080, 9090]),
            },
            DenyRule {
                net: "::1/128".into(),
                ports: PortSet::Only(vec![80, 443]),
            },
            DenyRule {
                net: "fe80::/10".into(),
                ports: PortSet::AllExcept(vec![22]),
            },
        ],
    };
    assert_eq!(
        p.deny_strings(),
        [
            "127.0.0.0/8",
            "127.0.0.1/32:8080",
            "127.0.0.0/8 except ports 8080,9090",
            "[::1]/128:80,443",
            "fe80::/10 except ports 22"
        ]
    );
}

#[test]
fn denies_follows_port_sets_and_fails_closed_on_unreadable_rules() {
    let mk = |ports| NetPolicy {
        allow_hosts: None,
        deny: vec![DenyRule {
            net: "10.0.0.0/8".into(),
            ports,
        }],
    };
    assert!(mk(PortSet::All).denies(ip("10.0.0.1"), 1));
    assert!(mk(PortSet::Only(vec![5432])).denies(ip("10.0.0.1"), 5432));
    assert!(!mk(PortSet::Only(vec![5432])).denies(ip("10.0.0.1"), 5433));
    assert!(!mk(PortSet::AllExcept(vec![443])).denies(ip("10.0.0.1"), 443));
    assert!(mk(PortSet::AllExcept(vec![443])).denies(ip("::ffff:10.0.0.1"), 444));
    assert!(!mk(PortSet::All).denies(ip("11.0.0.1"), 1));
    // Like Deno: only ::ffff: is read as IPv4, other forms need their own rules.
    assert!(!mk(PortSet::All).denies(ip("::10.0.0.1"), 1));
    let garbage = NetPolicy {
        allow_hosts: None,
        deny: vec![DenyRule {
            net: "not a net".into(),
            ports: PortSet::All,
        }],
    };
    assert!(garbage.denies(ip("8.8.8.8"), 53));
}

#[test]
fn policy_survives_bincode() {
    let op = allow(&["127.0.0.1:8080"]);
    let p = policy(
        &op,
        &["10.0.0.5:8080"],
        &FunctionRules {
            allow: Some(vec!["a.example".into()]),
            deny: vec![],
        },
    );
    let bytes = bincode::serialize(&p).unwrap();
    assert_eq!(bincode::deserialize::<NetPolicy>(&bytes).unwrap(), p);
}

#[test]
fn rule_parse_and_display_round_trip() {
    for (text, shown) in [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.0/8:443", "10.0.0.0/8:443"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.1.2.3/8:443", "10.0.0.0/8:443"),
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4/32", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4:80"),
        ("1.2.3.4/32:80", "1.2.3.4:80"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("0.0.0.0/0:65535", "0.0.0.0/0:65535"),
        ("fe80::/10", "fe80::/10"),
        ("fe80::1/10", "fe80::/10"),
        ("::1", "::1"),
        ("::1/128", "::1"),
        ("::", "::"),
        ("::/0", "::/0"),
        ("[::1]", "::1"),
        ("[::1]:8080", "[::1]:8080"),
        ("[::1]/128:8080", "[::1]:8080"),
        ("[fe80::]/10:443", "[fe80::]/10:443"),
        ("[fe80::1]/10:443", "[fe80::]/10:443"),
        ("[2001:db8::]/32", "2001:db8::/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("::1:8080", "::1:8080"),
    ] {
        let r: EgressRule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(r.to_string(), shown, "{text}");
        assert_eq!(shown.parse::<EgressRule>().unwrap(), r, "{shown}");
    }
    assert_eq!(
        rule("10.0.0.0/8:443"),
        EgressRule {
            net: net("10.0.0.0/8"),
            port: Some(443)
        }
    );
    assert_eq!(
        rule("1.2.3.4"),
        EgressRule {
            net: net("1.2.3.4/32"),
            port: None
        }
    );
    assert_eq!(
        rule("::1:8080"),
        EgressRule {
            net: net("::1:8080/128"),
            port: None
        }
    );
}

#[test]
fn rule_parse_errors_name_the_text() {
    for text in [
        "",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/08",
        "10.0.0.0/8:0",
        "10.0.0.0/8:65536",
        "10.0.0.0/8:",
        "10.0.0.0/8:+1",
        "10.0.0.0/8:080",
        "1.2.3.4:http",
        "1.2.3",
        "127.1",
        "01.2.3.4",
        "1.2.3.4.5",
        "256.0.0.0",
        "example.com",
        "example.com:443",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4/8/8",
        "fe80::/129",
        "fe80::/10:443",
        "[fe80::]/129:443",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:0",
        "[1.2.3.4]",
        "[1.2.3.4]:80",
        "[]",
        "fe80::1%eth0",
        "[fe80::1%eth0]",
        "10.0.0.0/8:443:1",
    ] {
        match text.parse::<EgressRule>() {
            Err(e @ EgressError::InvalidRule { .. }) => {
                assert!(e.to_string().contains(&format!("{text:?}")), "{e}");
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn host_spellings() {
    for (text, want) in [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0x.0x.0x.0x", "0.0.0.0"),
        ("0", "0.0.0.0"),
        ("00", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
        ("1.16777215", "1.255.255.255"),
        ("1.2.65535", "1.2.255.255"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0x00000000000000007f.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("::ffff:7f00:1", "::ffff:127.0.0.1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("fe80::1%eth0", "fe80::1"),
    ] {
        assert_eq!(parse_host_spelling(text), Some(ip(want)), "{text}");
    }
    for text in [
        "",
        ".",
        "localhost",
        "example.com",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.256.1.1",
        "1.2.3.256",
        "1.16777216",
        "1.2.65536",
        "4294967296",
        "08.1.1.1",
        "09",
        "0x7g.1",
        "1..2",
        ".1.2.3",
        "1.2.3.4..",
        "-1",
        "+1",
        " 1",
        "1.2.3.4 ",
        "0x1.0x2.0x3.0x4.0x5",
        "99999999999999999999999",
        "[::1",
        "::1]",
        "[127.0.0.1]",
        "[]",
        "::g",
        "1.2.3.4:80",
    ] {
        assert_eq!(parse_host_spelling(text), None, "{text}");
    }
}

#[test]
fn subtract_examples() {
    assert_eq!(
        subtract(net("10.0.0.0/8"), net("11.0.0.0/8")),
        vec![net("10.0.0.0/8")]
    );
    assert_eq!(subtract(net("10.0.0.0/8"), net("0.0.0.0/0")), vec![]);
    assert_eq!(subtract(net("10.0.0.0/8"), net("10.0.0.0/8")), vec![]);
    assert_eq!(
        subtract(net("10.0.0.0/8"), net("::/0")),
        vec![net("10.0.0.0/8")]
    );
    assert_eq!(
        subtract(net("10.0.0.0/30"), net("10.0.0.1/32")),
        vec![net("10.0.0.2/31"), net("10.0.0.0/32")]
    );
    assert_eq!(subtract(net("10.0.0.0/8"), net("10.1.2.3/32")).len(), 24);
    assert_eq!(subtract(net("::/0"), net("::1/128")).len(), 128);
    assert_eq!(subtract(net("10.9.9.9/8"), net("10.0.0.1/31")).len(), 23);
}

/// Marsaglia's xorshift64: reproducible without a `rand` dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn u128(&mut self) -> u128 {
        u128::from(self.next()) << 64 | u128::from(self.next())
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A random address inside `n`.
    fn addr_in(&mut self, n: IpNet) -> IpAddr {
        match n {
            IpNet::V4(n) => {
                let host = u32::from(n.hostmask()) & self.next() as u32;
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = u128::from(n.hostmask()) & self.u128();
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }

    /// A random network, often inside `outer` so that pairs overlap.
    fn net_near(&mut self, outer: IpNet) -> IpNet {
        let max = outer.max_prefix_len();
        let base = if self.below(4) == 0 {
            IpNet::new(self.addr_in(IpNet::new(outer.addr(), 0).unwrap()), 0).unwrap()
        } else {
            outer
        };
        let len = self.below(u64::from(max) + 1) as u8;
        IpNet::new(self.addr_in(base), len).unwrap().trunc()
    }
}

#[test]
fn subtract_property() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..600 {
        let (a, b) = if round % 2 == 0 {
            let a = rng.net_near(net("0.0.0.0/0"));
            (a, rng.net_near(a))
        } else {
            let a = rng.net_near(net("::/0"));
            (a, rng.net_near(a))
        };
        let (a, b) = if round % 7 == 0 { (b, a) } else { (a, b) };
        let pieces = subtract(a, b);
        assert!(pieces.len() <= usize::from(a.max_prefix_len()), "{a} - {b}");
        for (i, p) in pieces.iter().enumerate() {
            assert!(a.contains(p), "{p} outside {a}");
            assert!(!p.contains(&b) && !b.contains(p), "{p} overlaps {b}");
            for q in &pieces[i + 1..] {
                assert!(!p.contains(q) && !q.contains(p), "{p} overlaps {q}");
            }
        }
        for _ in 0..32 {
            let x = rng.addr_in(a);
            let kept = pieces.iter().any(|p| p.contains(&x));
            assert_eq!(kept, !b.contains(&x), "{x} in {a} - {b}");
        }
        if a.contains(&b) {
            let x = rng.addr_in(b);
            assert!(!pieces.iter().any(|p| p.contains(&x)), "{x} from {b} kept");
        }
    }
}

/// What the spec says, checked address by address, without CIDR arithmetic.
fn reference_denies(
    op: &OperatorRules,
    sup: &[SocketAddr],
    f: &FunctionRules,
    addr: IpAddr,
    port: u16,
) -> bool {
    let addr = unmap_ip(addr);
    let within = |n: IpNet| {
        with_embeddings(unmap_net(n))
            .iter()
            .any(|e| e.contains(&addr))
    };
    let hits = |r: &EgressRule| within(r.net) && r.port.is_none_or(|p| p == port);
    let default = DEFAULT_DENY.iter().any(|n| within(net(n)));
    let opened = op.allow.iter().any(hits);
    let supervisor = sup.iter().any(|s| {
        let host = IpNet::from(unmap_ip(s.ip()));
        let exempt = op
            .allow
            .iter()
            .any(|r| r.port == Some(s.port()) && unmap_net(r.net) == host);
        !exempt && s.port() == port && within(host)
    });
    (default && !opened) || op.deny.iter().any(hits) || supervisor || f.deny.iter().any(hits)
}

#[test]
fn effective_matches_the_reference_model() {
    const BASES: [&str; 14] = [
        "127.0.0.1/8",
        "127.0.0.1/32",
        "169.254.169.254/16",
        "169.254.169.254/32",
        "0.0.0.0/8",
        "10.1.2.3/8",
        "8.8.8.8/32",
        "::1/128",
        "fe80::1/10",
        "fd00:ec2::254/128",
        "64:ff9b::7f00:1/96",
        "2002:7f00:1::/16",
        "::ffff:127.0.0.1/96",
        "2001:db8::/32",
    ];
    const SUPERVISORS: [&str; 5] = [
        "127.0.0.1:8080",
        "10.0.0.5:8080",
        "[::1]:9000",
        "[::ffff:127.0.0.2]:8080",
        "[fe80::9]:80",
    ];
    const PORTS: [u16; 5] = [22, 80, 443, 8080, 9000];
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut checked = 0;
    for _ in 0..150 {
        let random_rules = |count: u64, port_odds: u64, rng: &mut XorShift| {
            (0..rng.below(count))
                .map(|_| {
                    let base = net(rng.pick(&BASES));
                    let len = base.prefix_len()
                        + rng.below(u64::from(base.max_prefix_len() - base.prefix_len()) + 1) as u8;
                    let n = IpNet::new(rng.addr_in(base), len).unwrap().trunc();
                    let port = (rng.below(port_odds) == 0).then(|| rng.pick(&PORTS));
                    EgressRule { net: n, port }
                })
                .collect::<Vec<_>>()
        };
        let op = OperatorRules {
            allow: random_rules(4, 3, &mut rng),
            deny: random_rules(3, 2, &mut rng),
        };
        let f = FunctionRules {
            allow: None,
            deny: random_rules(3, 2, &mut rng),
        };
        let sup: Vec<SocketAddr> = (0..rng.below(3))
            .map(|_| sock(rng.pick(&SUPERVISORS)))
            .collect();
        let p = match effective(&op, &sup, &f) {
            Ok(p) => p,
            Err(EgressError::TooManyPortExceptions { .. }) => continue,
            Err(e) => panic!("{e}"),
        };
        assert_minimal(&p);
        let nets: Vec<IpNet> = op
            .allow
            .iter()
            .chain(&op.deny)
            .chain(&f.deny)
            .map(|r| r.net)
            .collect();
        for _ in 0..32 {
            let around = match rng.below(3) {
                0 if !nets.is_empty() => rng.pick(&nets),
                _ => net(rng.pick(&BASES)),
            };
            let mut addr = rng.addr_in(around);
            if let (IpAddr::V4(v4), 0) = (addr, rng.below(3)) {
                let forms = with_embeddings(IpNet::from(IpAddr::V4(v4)));
                let form = rng.pick(&forms[1..]);
                addr = rng.addr_in(form);
                if rng.below(2) == 0 {
                    addr = forms[1].addr();
                }
            }
            for port in PORTS.into_iter().chain([1, 65535]) {
                let want = reference_denies(&op, &sup, &f, addr, port);
                assert_eq!(
                    p.denies(addr, port),
                    want,
                    "{addr}:{port} op={op:?} sup={sup:?} f={f:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20_000, "only {checked} checks");
}
