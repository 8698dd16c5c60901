//! Layer::Landlock: no filesystem access but what name resolution reads,
//! no TCP bind, no signals or abstract sockets outside the domain.

use std::fmt::Write as _;

use fn_protocol::LayerState;
use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope, ABI,
};

/// The newest ABI this crate knows; BestEffort trims the request to what
/// the running kernel has, so every right the kernel can enforce is handled.
const REQUESTED_ABI: ABI = ABI::V10;

/// What glibc's getaddrinfo opens for `localhost` and for a DNS name
/// (strace on Debian 12, glibc 2.36, nsswitch `hosts: files dns`; files and
/// dns are built into libc since 2.34, so no libnss_*.so is loaded):
/// nsswitch.conf, host.conf and resolv.conf on first use, hosts on every
/// lookup, gai.conf as soon as a name has more than one address (RFC 3484
/// sorting). Not /etc/services (std passes no service name, the port is
/// set afterwards) nor /etc/ld.so.cache. Modules another host's nsswitch
/// names (mdns, myhostname, resolve) fail to load and glibc moves on to the
/// next source.
const RESOLVER_FILES: [&str; 5] = [
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/gai.conf",
];

/// V8 seeds its random number generators (Math.random, the string hash
/// seed against hash flooding, mmap address hints) from /dev/urandom when
/// the embedder installs no entropy source, and deno_core installs none
/// (v8/src/base/utils/random-number-generator.cc); denied, V8 silently
/// falls back to a time-based seed. Reading it discloses nothing.
const ENTROPY_FILE: &str = "/dev/urandom";

/// The worker reopens stdio on /dev/null after boot.
const NULL_DEVICE: &str = "/dev/null";

pub fn restrict_self() -> LayerState {
    match build_and_apply() {
        Ok(state) => state,
        Err(e) => LayerState::Failed(e.to_string()),
    }
}

fn build_and_apply() -> Result<LayerState, RulesetError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(REQUESTED_ABI))?
        // Bind is handled with no rule, so it is denied on every port
        // (including 0). Connect is not handled: egress is policed by
        // Deno's permissions. UDP is not handled either: ABI 10's UDP bind
        // right also covers the implicit bind of an unbound socket's first
        // send, which every DNS query does.
        .handle_access(AccessNet::BindTcp)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?;

    let mut allowed = String::new();
    for path in RESOLVER_FILES.iter().chain([&ENTROPY_FILE]) {
        // PathFd opens with O_PATH and follows symlinks, so the rule lands on
        // the target's inode (a resolv.conf symlink into /run works), which
        // is what Landlock checks at open. Missing files get no rule.
        let Ok(fd) = PathFd::new(path) else { continue };
        ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::ReadFile))?;
        let _ = write!(allowed, "{path} ");
    }
    if let Ok(fd) = PathFd::new(NULL_DEVICE) {
        ruleset = ruleset.add_rule(PathBeneath::new(
            fd,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?;
        let _ = write!(allowed, "{NULL_DEVICE} (rw)");
    }

    let status = ruleset.restrict_self()?;
    let abi = match status.landlock {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => kernel_abi.unwrap_or(effective_abi as i32),
        LandlockStatus::NotEnabled => return Ok(LayerState::Failed("Landlock is disabled".into())),
        LandlockStatus::NotImplemented => {
            return Ok(LayerState::Failed("kernel without Landlock".into()))
        }
    };
    let coverage = match status.ruleset {
        RulesetStatus::NotEnforced => {
            return Ok(LayerState::Failed(format!(
                "ruleset not enforced (ABI {abi})"
            )));
        }
        RulesetStatus::FullyEnforced => "all requested rights",
        // Expected on any kernel older than REQUESTED_ABI.
        RulesetStatus::PartiallyEnforced => "every right the kernel knows",
    };
    let net = if abi >= 4 {
        "TCP bind denied"
    } else {
        "TCP bind NOT restricted (ABI < 4)"
    };
    let scopes = if abi >= 6 {
        "signals and abstract sockets scoped"
    } else {
        "signals and abstract sockets NOT scoped (ABI < 6)"
    };
    Ok(LayerState::Active(format!(
        "ABI {abi}, {coverage}; {net}; {scopes}; readable: {}",
        allowed.trim_end()
    )))
}
