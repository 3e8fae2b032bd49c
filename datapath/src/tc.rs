//! The tc egress program (`ebpf/tc_egress.c`): it records the connections
//! this host opens in `cg_flows`, which XDP consults to let their replies in
//! when `allow_established` is on. It is attached to every filtered
//! interface whatever the policy says: it only records.
//!
//! Layout under `bpffs_dir`, beside the XDP links (see `mod.rs`; `.` of an
//! interface name is stored as `:` there too):
//!
//! ```text
//! links/tc-<ifname>     the TCX link of the interface (Linux 6.6 and later)
//! links/tcnl-<ifname>   on older kernels, the program of the interface's
//!                       netlink filter (clsact egress, priority
//!                       NETLINK_PRIORITY, handle NETLINK_HANDLE). The filter
//!                       lives in the interface, not in bpffs; the pin says
//!                       that crmguard put it there, so that `uninstall`
//!                       removes it.
//! ```
//!
//! Both kinds outlive the agent, like the XDP link: replies keep passing
//! while the agent is down. A restarted agent replaces the program in place
//! (BPF_LINK_UPDATE for TCX, a netlink filter replacement otherwise), so
//! recording never stops.

use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{Link, LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::sys::SyscallError;
use aya::{Ebpf, EbpfError, EbpfLoader};

/// The egress program, compiled by build.rs and embedded in the binary.
pub(crate) static TC_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_egress.o"));

/// The program's entry point (its C function name).
pub const TC_PROGRAM: &str = "tc_egress";

/// The netlink filter's place in the clsact egress hook on kernels without
/// TCX: fixed, so that a restarted agent finds and replaces its own filter.
pub const NETLINK_PRIORITY: u16 = 0xc6c6;
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0xc6c6);

/// How the egress program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EgressMode {
    /// A TCX link (Linux 6.6 and later), pinned.
    Tcx,
    /// A filter on the clsact qdisc, for older kernels.
    Netlink,
}

impl EgressMode {
    pub fn name(self) -> &'static str {
        match self {
            EgressMode::Tcx => "tcx",
            EgressMode::Netlink => "netlink",
        }
    }

    fn pin_prefix(self) -> &'static str {
        match self {
            EgressMode::Tcx => "tc",
            EgressMode::Netlink => "tcnl",
        }
    }

    fn other(self) -> EgressMode {
        match self {
            EgressMode::Tcx => EgressMode::Netlink,
            EgressMode::Netlink => EgressMode::Tcx,
        }
    }
}

/// Which attachments a new attachment may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// TCX, or the netlink filter when the kernel has no TCX.
    Auto,
    /// The netlink filter only (what kernels before 6.6 get).
    Netlink,
}

/// The egress program on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressAttachment {
    pub mode: EgressMode,
    /// Whether the attachment was found in place (adopted) rather than made.
    pub adopted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("preparing the BPF filesystem")]
    Bpffs(#[source] super::bpffs::BpffsError),
    #[error(transparent)]
    Stamp(super::stamp::StampError),
    #[error("loading the tc egress program")]
    Load(#[source] EbpfError),
    #[error("the tc egress program has no entry point `{TC_PROGRAM}`")]
    NoProgram,
    #[error("verifying the tc egress program")]
    Verify(#[source] ProgramError),
    #[error("adding the clsact qdisc to {interface}")]
    Clsact {
        interface: String,
        #[source]
        source: TcError,
    },
    #[error("attaching the tc egress program to {interface} ({mode})")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the kernel attached the tc egress program to {interface} without a BPF link")]
    NoLink { interface: String },
    #[error("pinning the tc egress attachment of {interface} at {path}")]
    Pin {
        interface: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("opening the pinned tc egress link {path}")]
    AdoptLink {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("adopting the pinned tc egress link {path}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("detaching the tc egress filter from {interface}")]
    Detach {
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl EgressError {
    /// The kernel feature whose absence caused this error, when that is the
    /// cause (the command then exits 69 and names it).
    pub fn missing_feature(&self) -> Option<&'static str> {
        match self {
            EgressError::Load(e) if super::errno(e) == Some(libc::ENOSYS) => {
                Some("the bpf() system call (CONFIG_BPF_SYSCALL)")
            }
            EgressError::Verify(e) if super::errno(e) == Some(libc::EINVAL) => {
                Some("tc BPF classifiers (CONFIG_NET_CLS_BPF)")
            }
            EgressError::Clsact { source, .. }
                if matches!(
                    super::errno(source),
                    Some(libc::ENOENT | libc::EOPNOTSUPP | libc::EINVAL)
                ) =>
            {
                Some("the clsact qdisc (CONFIG_NET_SCH_INGRESS) for tc egress programs")
            }
            EgressError::Attach { source, .. }
                if matches!(
                    super::errno(source),
                    Some(libc::ENOENT | libc::EOPNOTSUPP | libc::EINVAL)
                ) =>
            {
                Some("tc egress BPF programs (TCX, Linux 6.6, or CONFIG_NET_CLS_BPF)")
            }
            _ => None,
        }
    }
}

/// Whether a failed TCX attachment means that the kernel has no TCX (before
/// Linux 6.6 BPF_LINK_CREATE does not know the attach type).
fn tcx_unsupported(error: &ProgramError) -> bool {
    matches!(
        error,
        ProgramError::SyscallError(SyscallError { io_error, .. })
            if matches!(io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524))
    )
}

fn pin_file_name(ifname: &str, mode: EgressMode) -> String {
    super::pin_name(mode.pin_prefix(), ifname)
}

/// The interface and mode a pin's file name stands for; `None` for the XDP
/// links that share the directory.
fn parse_pin_file_name(file: &str) -> Option<(String, EgressMode)> {
    let (prefix, ifname) = super::parse_pin_name(file)?;
    let mode = [EgressMode::Tcx, EgressMode::Netlink]
        .into_iter()
        .find(|m| m.pin_prefix() == prefix)?;
    Some((ifname, mode))
}

fn pin_path(bpffs_dir: &Path, ifname: &str, mode: EgressMode) -> PathBuf {
    super::links_dir(bpffs_dir).join(pin_file_name(ifname, mode))
}

/// The egress pins found under `bpffs_dir`: (interface, mode, path).
pub fn pinned(bpffs_dir: &Path) -> Vec<(String, EgressMode, PathBuf)> {
    super::pins_in_links_dir(bpffs_dir, parse_pin_file_name)
}

fn remove_file(path: &Path) -> Result<(), EgressError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EgressError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes crmguard's netlink filter from an interface. An interface that
/// is gone took its filters with it; a filter that is gone is not an error.
fn detach_netlink(ifname: &str) -> Result<(), EgressError> {
    let Ok(link) = SchedClassifierLink::attached(
        ifname,
        TcAttachType::Egress,
        NETLINK_PRIORITY,
        NETLINK_HANDLE,
        None,
    ) else {
        return Ok(());
    };
    match link.detach() {
        Ok(()) => Ok(()),
        Err(e) if super::errno(&e) == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(EgressError::Detach {
            interface: ifname.to_owned(),
            source,
        }),
    }
}

/// Removes one egress attachment: the pin, and for netlink the filter it
/// stands for. Removing a TCX link's last pin detaches it.
fn remove_pinned(ifname: &str, mode: EgressMode, path: &Path) -> Result<(), EgressError> {
    if mode == EgressMode::Netlink {
        detach_netlink(ifname)?;
    }
    remove_file(path)
}

/// Detaches the egress program from interfaces that are no longer filtered.
pub fn remove_stale(
    pinned: &[(String, EgressMode, PathBuf)],
    wanted: &std::collections::BTreeSet<&str>,
) -> Result<(), EgressError> {
    for (name, mode, path) in pinned {
        if !wanted.contains(name.as_str()) && path.exists() {
            tracing::info!(interface = %name, "detaching the egress recorder from an interface no longer configured");
            remove_pinned(name, *mode, path)?;
        }
    }
    Ok(())
}

/// Removes every egress attachment pinned under `bpffs_dir`; returns the
/// interfaces it was removed from. Runs before the XDP side empties the
/// links directory, because a netlink filter is only found through its pin.
pub fn uninstall(bpffs_dir: &Path) -> Result<Vec<String>, EgressError> {
    let mut removed = Vec::new();
    for (name, mode, path) in pinned(bpffs_dir) {
        remove_pinned(&name, mode, &path)?;
        removed.push(name);
    }
    Ok(removed)
}

/// The loaded egress program, attached to any number of interfaces.
pub struct Egress {
    ebpf: Ebpf,
    bpffs_dir: PathBuf,
}

impl Egress {
    /// Loads the program against the maps pinned under `bpffs_dir/maps`
    /// (creating those that are missing), so that it writes the `cg_flows`
    /// that XDP reads. The set's ABI stamp is claimed first, as for XDP.
    pub fn load(bpffs_dir: &Path) -> Result<Egress, EgressError> {
        let maps_dir = super::maps_dir(bpffs_dir);
        super::bpffs::ensure(&maps_dir).map_err(EgressError::Bpffs)?;
        super::stamp::claim(&maps_dir).map_err(EgressError::Stamp)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(super::maps_dir(bpffs_dir))
            .load(TC_OBJECT)
            .map_err(EgressError::Load)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .ok_or(EgressError::NoProgram)?
            .try_into()
            .map_err(EgressError::Verify)?;
        program.load().map_err(EgressError::Verify)?;
        Ok(Egress {
            ebpf,
            bpffs_dir: bpffs_dir.to_owned(),
        })
    }

    /// The loaded program, e.g. for `TestRun`.
    pub fn program(&mut self) -> Result<&mut SchedClassifier, EgressError> {
        self.ebpf
            .program_mut(TC_PROGRAM)
            .ok_or(EgressError::NoProgram)?
            .try_into()
            .map_err(EgressError::Verify)
    }

    /// Puts this program on the egress of interface `name`: into the
    /// attachment a previous agent pinned when there is one (without a
    /// moment of no recording), else in a new one. An interface ends with
    /// exactly one egress attachment of crmguard.
    pub fn attach(
        &mut self,
        name: &str,
        ifindex: u32,
        mechanism: Mechanism,
    ) -> Result<EgressAttachment, EgressError> {
        let tcx_pin = pin_path(&self.bpffs_dir, name, EgressMode::Tcx);
        let netlink_pin = pin_path(&self.bpffs_dir, name, EgressMode::Netlink);
        let mut attached = None;
        if tcx_pin.exists() && self.adopt_tcx(name, ifindex, &tcx_pin)? {
            attached = Some(EgressAttachment {
                mode: EgressMode::Tcx,
                adopted: true,
            });
        } else if netlink_pin.exists() && self.replace_netlink(name, &netlink_pin)? {
            attached = Some(EgressAttachment {
                mode: EgressMode::Netlink,
                adopted: true,
            });
        }
        let attached = match attached {
            Some(attached) => attached,
            None => self.attach_new(name, mechanism)?,
        };
        let other = attached.mode.other();
        let other_pin = pin_path(&self.bpffs_dir, name, other);
        if other_pin.exists() {
            remove_pinned(name, other, &other_pin)?;
        }
        Ok(attached)
    }

    /// Replaces the program inside a pinned TCX link. Returns false (and
    /// removes the pin) when the link no longer belongs to the interface.
    fn adopt_tcx(&mut self, name: &str, ifindex: u32, path: &Path) -> Result<bool, EgressError> {
        let link_err = |source| EgressError::AdoptLink {
            path: path.to_owned(),
            source,
        };
        let link = FdLink::from(PinnedLink::from_pin(path).map_err(link_err)?);
        if super::link_ifindex(&link) != Some(ifindex) {
            tracing::warn!(
                interface = name,
                "pinned egress link belongs to a removed interface; attaching anew"
            );
            remove_file(path)?;
            return Ok(false);
        }
        let link = SchedClassifierLink::try_from(link).map_err(link_err)?;
        self.program()?
            .attach_to_link(link)
            .map_err(|source| EgressError::Adopt {
                path: path.to_owned(),
                source,
            })?;
        tracing::info!(interface = name, "adopted the pinned egress recorder");
        Ok(true)
    }

    /// Replaces the program of crmguard's netlink filter on the interface.
    /// Returns false (and removes the pin) when the filter is gone.
    fn replace_netlink(&mut self, name: &str, path: &Path) -> Result<bool, EgressError> {
        let Ok(link) = SchedClassifierLink::attached(
            name,
            TcAttachType::Egress,
            NETLINK_PRIORITY,
            NETLINK_HANDLE,
            None,
        ) else {
            remove_file(path)?;
            return Ok(false);
        };
        match self.program()?.attach_to_link(link) {
            Ok(id) => {
                self.keep_netlink(name, id)?;
                tracing::info!(interface = name, "adopted the egress recorder's tc filter");
                Ok(true)
            }
            Err(e) if super::errno(&e) == Some(libc::ENOENT) => {
                remove_file(path)?;
                Ok(false)
            }
            Err(source) => Err(EgressError::Attach {
                interface: name.to_owned(),
                mode: EgressMode::Netlink.name(),
                source,
            }),
        }
    }

    fn attach_new(
        &mut self,
        name: &str,
        mechanism: Mechanism,
    ) -> Result<EgressAttachment, EgressError> {
        if mechanism == Mechanism::Auto {
            match self.attach_tcx(name) {
                Ok(()) => {
                    return Ok(EgressAttachment {
                        mode: EgressMode::Tcx,
                        adopted: false,
                    })
                }
                Err(EgressError::Attach { source, .. }) if tcx_unsupported(&source) => {
                    tracing::warn!(
                        interface = name,
                        error = %crmguard_core::error_chain(&source),
                        "the kernel has no TCX (Linux 6.6); recording outbound flows with a tc filter"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        self.attach_netlink(name)?;
        Ok(EgressAttachment {
            mode: EgressMode::Netlink,
            adopted: false,
        })
    }

    fn attach_tcx(&mut self, name: &str) -> Result<(), EgressError> {
        let attach_err = |source| EgressError::Attach {
            interface: name.to_owned(),
            mode: EgressMode::Tcx.name(),
            source,
        };
        let program = self.program()?;
        let id = program
            .attach_with_options(
                name,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?;
        let link = program.take_link(id).map_err(attach_err)?;
        let link = FdLink::try_from(link).map_err(|_| EgressError::NoLink {
            interface: name.to_owned(),
        })?;
        let path = pin_path(&self.bpffs_dir, name, EgressMode::Tcx);
        link.pin(&path).map_err(|source| EgressError::Pin {
            interface: name.to_owned(),
            path,
            source,
        })?;
        tracing::info!(interface = name, "attached the egress recorder (tcx)");
        Ok(())
    }

    fn attach_netlink(&mut self, name: &str) -> Result<(), EgressError> {
        match tc::qdisc_add_clsact(name) {
            Ok(()) => {}
            Err(e) if super::errno(&e) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(EgressError::Clsact {
                    interface: name.to_owned(),
                    source,
                })
            }
        }
        let options = || {
            TcAttachOptions::Netlink(NlOptions {
                priority: NETLINK_PRIORITY,
                handle: NETLINK_HANDLE,
                classid: None,
            })
        };
        let program = self.program()?;
        let id = match program.attach_with_options(name, TcAttachType::Egress, options()) {
            // A filter of a crmguard whose pins were lost: take its place.
            Err(e) if super::errno(&e) == Some(libc::EEXIST) => {
                let link = SchedClassifierLink::attached(
                    name,
                    TcAttachType::Egress,
                    NETLINK_PRIORITY,
                    NETLINK_HANDLE,
                    None,
                )
                .map_err(|e| ProgramError::from(TcError::IoError(e)));
                link.and_then(|link| program.attach_to_link(link))
            }
            other => other,
        }
        .map_err(|source| EgressError::Attach {
            interface: name.to_owned(),
            mode: EgressMode::Netlink.name(),
            source,
        })?;
        self.keep_netlink(name, id)?;
        tracing::info!(interface = name, "attached the egress recorder (tc filter)");
        Ok(())
    }

    /// Leaves the netlink filter `id` in place when this program is dropped,
    /// and (re)writes the pin that records it.
    fn keep_netlink(
        &mut self,
        name: &str,
        id: aya::programs::tc::SchedClassifierLinkId,
    ) -> Result<(), EgressError> {
        let path = pin_path(&self.bpffs_dir, name, EgressMode::Netlink);
        let program = self.program()?;
        let link = program
            .take_link(id)
            .map_err(|source| EgressError::Attach {
                interface: name.to_owned(),
                mode: EgressMode::Netlink.name(),
                source,
            })?;
        // Dropping the link would delete the filter: it must outlive the agent.
        std::mem::forget(link);
        remove_file(&path)?;
        program.pin(&path).map_err(|source| EgressError::Pin {
            interface: name.to_owned(),
            path,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_without_dots() {
        for (ifname, mode) in [
            ("eth0", EgressMode::Tcx),
            ("eth0.100", EgressMode::Netlink),
            ("veth-a.b.c", EgressMode::Tcx),
        ] {
            let file = pin_file_name(ifname, mode);
            assert!(!file.contains('.'), "{file}");
            assert_eq!(parse_pin_file_name(&file), Some((ifname.to_owned(), mode)));
        }
    }

    #[test]
    fn xdp_link_pins_are_not_egress_pins() {
        for file in ["native-eth0", "generic-eth0.100", "tcx-eth0", "tc"] {
            assert_eq!(parse_pin_file_name(file), None, "{file}");
        }
        assert_eq!(
            super::super::parse_link_file_name(&pin_file_name("eth0", EgressMode::Tcx)),
            None
        );
        assert_eq!(
            super::super::parse_link_file_name(&pin_file_name("eth0", EgressMode::Netlink)),
            None
        );
    }

    #[test]
    fn only_missing_tcx_falls_back_to_netlink() {
        let syscall = |errno| {
            ProgramError::SyscallError(SyscallError {
                call: "bpf_link_create",
                io_error: io::Error::from_raw_os_error(errno),
            })
        };
        assert!(tcx_unsupported(&syscall(libc::EINVAL)));
        assert!(tcx_unsupported(&syscall(libc::EOPNOTSUPP)));
        assert!(!tcx_unsupported(&syscall(libc::EPERM)));
        assert!(!tcx_unsupported(&syscall(libc::ENODEV)));
    }
}
