//! The egress policy from the supervisor, as Deno permissions: every host is
//! granted (or only the function's own allow list), and the policy's deny
//! rules are checked by name and again on every resolved address.

use std::sync::Arc;

use deno_runtime::deno_permissions::{
    Host, NetDescriptor, Permissions, PermissionsContainer, PermissionsOptions,
};
use deno_runtime::permissions::RuntimePermissionDescriptorParser;
use fn_protocol::egress::{DenyRule, PortSet};
use fn_protocol::NetPolicy;

pub fn permissions(policy: &NetPolicy) -> Result<PermissionsContainer, String> {
    let parser = Arc::new(RuntimePermissionDescriptorParser::new(
        sys_traits::impls::RealSys,
    ));
    // Everything but the network stays denied: read, write, env, run, ffi,
    // sys and import are `None`, and nothing ever prompts.
    let options = PermissionsOptions {
        allow_net: Some(vec![]),
        prompt: false,
        ..Default::default()
    };
    let mut perms =
        Permissions::from_options(parser.as_ref(), &options).map_err(|e| e.to_string())?;
    let allow = match policy.deno_allow_net() {
        // An empty list is Deno's "every host".
        Some(hosts) if hosts.is_empty() => Some(vec![]),
        Some(hosts) => {
            let mut list = Vec::with_capacity(hosts.len());
            for host in &hosts {
                list.push(allow_descriptor(host)?);
            }
            Some(list)
        }
        // The function allowed no host at all.
        None => None,
    };
    let mut deny = Vec::new();
    for rule in &policy.deny {
        expand(rule, &mut deny)?;
    }
    perms.net = Permissions::new_unary(allow, Some(deny), false);
    Ok(PermissionsContainer::new(parser, perms))
}

/// Deno cannot parse IPv6 CIDRs from text, so subnets are built directly.
fn allow_descriptor(entry: &str) -> Result<NetDescriptor, String> {
    if let Some((net, port)) = split_cidr(entry) {
        return Ok(NetDescriptor(Host::IpSubnet(net), port));
    }
    NetDescriptor::parse_for_list(entry).map_err(|e| format!("allow entry {entry:?}: {e}"))
}

/// `10.0.0.0/8`, `10.0.0.0/8:443`, `[fe80::]/10:443`, `fe80::/10`.
fn split_cidr(entry: &str) -> Option<(ipnet::IpNet, Option<u32>)> {
    if !entry.contains('/') {
        return None;
    }
    let unbracketed = entry
        .strip_prefix('[')
        .map(|rest| rest.replacen(']', "", 1));
    let text = unbracketed.as_deref().unwrap_or(entry);
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Some((net, None));
    }
    let (net, port) = text.rsplit_once(':')?;
    Some((net.parse().ok()?, Some(port.parse().ok()?)))
}

fn expand(rule: &DenyRule, out: &mut Vec<NetDescriptor>) -> Result<(), String> {
    let net: ipnet::IpNet = rule
        .net
        .parse()
        .map_err(|e| format!("deny rule {:?}: {e}", rule.net))?;
    let host = Host::IpSubnet(net);
    match &rule.ports {
        PortSet::All => out.push(NetDescriptor(host, None)),
        PortSet::Only(ports) => out.extend(
            ports
                .iter()
                .map(|p| NetDescriptor(host.clone(), Some(*p as u32))),
        ),
        PortSet::AllExcept(open) => out.extend(
            (0..=u16::MAX)
                .filter(|p| !open.contains(p))
                .map(|p| NetDescriptor(host.clone(), Some(p as u32))),
        ),
    }
    Ok(())
}
