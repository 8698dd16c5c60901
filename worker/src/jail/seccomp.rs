//! Layer::Seccomp: the kernel interfaces a JavaScript runtime never needs
//! after boot, denied on every thread with an errno (never a kill: the
//! worker keeps serving and reports the error).

use std::collections::BTreeMap;

use fn_protocol::{Layer, LayerState, SandboxReport, WorkerArgs};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::{settle, sys, JailError};

/// After the Deno runtime has booted and before user code runs: one
/// filter set installed on all threads at once (SECCOMP_FILTER_FLAG_TSYNC),
/// including the ones V8 and tokio started before.
pub fn lock_syscalls(args: &WorkerArgs, report: &mut SandboxReport) -> Result<(), JailError> {
    let state = match install() {
        Ok(count) => LayerState::Active(format!(
            "{count} syscalls filtered on all threads (clone3 -> ENOSYS, x32 ABI denied)"
        )),
        Err(reason) => LayerState::Failed(reason),
    };
    settle(report, args, Layer::Seccomp, state)
}

/// Returns the number of syscalls the filters deny.
fn install() -> Result<usize, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let rules = denied_syscalls().map_err(|e| format!("building the filter: {e}"))?;
    let count = rules.len() + 1; // + clone3
    let deny: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|e| format!("compiling the filter: {e}"))?;
    let special = special_cases(arch)?;

    // Two filters because seccompiler gives a filter a single match action
    // and cannot test the syscall number beyond equality. Their matches do
    // not overlap, so the order of evaluation does not matter.
    seccompiler::apply_filter_all_threads(&deny).map_err(|e| format!("installing: {e}"))?;
    seccompiler::apply_filter_all_threads(&special)
        .map_err(|e| format!("installing the clone3/x32 filter: {e}"))?;

    // TSYNC either filters every thread or fails; check this one for sure.
    match sys::prctl(libc::PR_GET_SECCOMP, 0) {
        Ok(2) => Ok(count),
        Ok(mode) => Err(format!("PR_GET_SECCOMP reports mode {mode} after install")),
        Err(e) => Err(format!("PR_GET_SECCOMP: {e}")),
    }
}

/// Syscalls answered with EPERM, some only for certain arguments.
fn denied_syscalls() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let always = [
        // Running other programs; Landlock would also refuse the execute
        // right, this makes it independent of the filesystem view.
        libc::SYS_execve,
        libc::SYS_execveat,
        // Other processes' memory and descriptors.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        // Namespaces: a user namespace hands out capabilities inside it and
        // with them the kernel's least-hardened code paths.
        libc::SYS_unshare,
        libc::SYS_setns,
        // Mounts, old and new API.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        // Large kernel attack surface nobody here needs.
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_userfaultfd,
        // Serving is the supervisor's job; outbound connections are enough.
        libc::SYS_listen,
        libc::SYS_socketpair,
        // Whole-system operations (they need capabilities we no longer have,
        // which is no reason to let the kernel parse them).
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_by_handle_at,
        // Identity changes.
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        always.into_iter().map(|nr| (nr, Vec::new())).collect();

    // clone with any namespace flag; plain threads and fork stay allowed.
    // Flags are the first argument on every supported architecture.
    let namespace_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ];
    let clone = namespace_flags
        .into_iter()
        .map(|flag| {
            let flag = flag as u64;
            rule(vec![condition(0, SeccompCmpOp::MaskedEq(flag), flag)?])
        })
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_clone, clone);

    // Only IP sockets: no netlink (routing, audit), packet, unix, vsock...
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![
            condition(0, SeccompCmpOp::Ne, libc::AF_INET as u64)?,
            condition(0, SeccompCmpOp::Ne, libc::AF_INET6 as u64)?,
        ])?],
    );

    // Only the query: READ_IMPLIES_EXEC would make every later readable
    // mapping executable.
    rules.insert(
        libc::SYS_personality,
        vec![rule(vec![condition(0, SeccompCmpOp::Ne, 0xffff_ffff)?])?],
    );
    Ok(rules)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conditions)
}

/// Compares the low 32 bits of an argument: every argument tested here is
/// an int or has all its flags there.
fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

/// seccomp_data offsets (include/uapi/linux/seccomp.h).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// x32 syscalls run with the x86_64 audit arch and this bit in the
/// number, so a list of x86_64 numbers does not see them: x32's execve is
/// 0x40000000 + 520, not 59. seccompiler only compares numbers for
/// equality, hence this hand-written filter.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

fn audit_arch(arch: TargetArch) -> u32 {
    // EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE (include/uapi/linux/audit.h)
    let machine = match arch {
        TargetArch::x86_64 => 62,
        TargetArch::aarch64 => 183,
        TargetArch::riscv64 => 243,
    };
    machine | 0x8000_0000 | 0x4000_0000
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// clone3 answers ENOSYS: its flags sit in a struct seccomp cannot read,
/// and ENOSYS (unlike EPERM) makes glibc and Rust fall back to clone, whose
/// flags the main filter checks. On x86_64, every x32 syscall gets EPERM.
/// Another arch gets ALLOW here: the main filter kills the process for it
/// (seccompiler's arch check; only int 0x80 from native code gets there).
fn special_cases(arch: TargetArch) -> Result<BpfProgram, String> {
    let clone3 = u32::try_from(libc::SYS_clone3).map_err(|e| e.to_string())?;
    let allow = libc::SECCOMP_RET_ALLOW;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let x32 = matches!(arch, TargetArch::x86_64);
    // Jump offsets count from the next instruction; they target the returns
    // at the end: [.., ret allow, ret enosys, (x86_64) ret eperm].
    let mut program = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, audit_arch(arch), 0, if x32 { 3 } else { 2 }),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ];
    if x32 {
        program.push(jump(BPF_JSET_K, X32_SYSCALL_BIT, 3, 0));
    }
    program.extend([
        jump(BPF_JEQ_K, clone3, 1, 0),
        stmt(BPF_RET_K, allow),
        stmt(BPF_RET_K, enosys),
    ]);
    if x32 {
        program.push(stmt(BPF_RET_K, eperm));
    }
    Ok(program)
}
