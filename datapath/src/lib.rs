//! The kernel side: loading the XDP program, attaching it, pinning it so that
//! it outlives the agent, adopting what a previous agent pinned, applying
//! policies and reading counters.
//!
//! Layout under `bpffs_dir`:
//!
//! ```text
//! maps/cg_*                      every map of the program, pinned by name
//! maps/cg_abi                    the ABI version of the set (stamp.rs); a set of
//!                                another version is refused, never replaced
//! links/<mode>-<ifname>          one XDP link per interface; the name says the mode
//!                                (native or generic); bpffs forbids dots in names,
//!                                so a `.` of the interface name is stored as `:`,
//!                                which interface names cannot contain
//! links/tc-<ifname>, tcnl-<ifname>  the egress flow recorder of the interface (tc.rs)
//! ```
//!
//! Invariant: an interface that had the filter keeps a filter at every
//! instant. A restarted agent replaces the program inside the pinned link in
//! one BPF_LINK_UPDATE and never detaches first; the maps it finds pinned keep
//! the last policy until the new one is written.

pub mod bans;
pub mod bpffs;
#[cfg(test)]
mod btf_layout;
pub mod events;
pub mod links;
pub mod maps;
pub mod metrics;
pub mod stamp;
pub mod sys;
pub mod tc;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader};

use crmguard_core::abi::{self, Action, Reason};
use crmguard_core::config::XdpMode as ModeSetting;
use crmguard_core::policy::CompiledPolicy;

pub use maps::{Divergence, MapsError, PolicyMaps};

/// The XDP program, compiled by build.rs and embedded in the binary.
pub(crate) static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_firewall.o"));

/// The program's entry point (its C function name).
pub const XDP_PROGRAM: &str = "xdp_firewall";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "native" => Some(AttachMode::Native),
            "generic" => Some(AttachMode::Generic),
            _ => None,
        }
    }
}

/// One interface the filter is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// The counter slot of this interface in `cg_stats`.
    pub slot: u32,
    /// Whether the link was found pinned (adopted) rather than created.
    pub adopted: bool,
    /// How the egress flow recorder is attached (`None` until it is).
    pub egress: Option<tc::EgressMode>,
}

/// What the agent asks for on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRequest {
    pub name: String,
    pub mode: ModeSetting,
    /// A listed `[[interface]]`: failing to attach to it stops the start, unless it does not
    /// exist yet (it is then reported in [`Datapath::failures`] and attached when it appears,
    /// as a bond or VLAN made by the network configuration after the agent started is). An
    /// interface the agent chose by itself is skipped when it fails, and reported the same way.
    pub required: bool,
}

/// An interface the filter could not be attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachFailure {
    pub name: String,
    /// The error with its causes.
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("preparing the BPF filesystem")]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("loading the XDP program")]
    Load(#[source] EbpfError),
    #[error("the XDP program has no entry point `{XDP_PROGRAM}`")]
    NoProgram,
    #[error("verifying the XDP program")]
    Verify(#[source] ProgramError),
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("more than {max} interfaces", max = abi::MAX_IFSLOTS)]
    TooManyInterfaces,
    #[error("attaching XDP to {interface} in {mode} mode")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the kernel attached XDP to {interface} without a BPF link (needs Linux 5.9 or later)"
    )]
    NoLink { interface: String },
    #[error("pinning the XDP link of {interface} at {path}")]
    Pin {
        interface: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("opening the pinned XDP link {path}")]
    AdoptLink {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("adopting the pinned XDP link {path}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Stamp(#[from] stamp::StampError),
    #[error(transparent)]
    Egress(Box<tc::EgressError>),
}

impl From<tc::EgressError> for DatapathError {
    fn from(error: tc::EgressError) -> Self {
        DatapathError::Egress(Box::new(error))
    }
}

impl DatapathError {
    /// Whether the pinned maps belong to another ABI version; the command
    /// then exits 69 with [`stamp::FOREIGN_ADVICE`].
    pub fn is_foreign_abi(&self) -> bool {
        match self {
            DatapathError::Stamp(e) => e.is_foreign(),
            DatapathError::Egress(e) => matches!(&**e, tc::EgressError::Stamp(s) if s.is_foreign()),
            _ => false,
        }
    }

    /// The kernel feature whose absence caused this error, when that is the
    /// cause (the command then exits 69 and names it).
    pub fn missing_feature(&self) -> Option<&'static str> {
        match self {
            DatapathError::NoLink { .. } => Some("BPF links for XDP (Linux 5.9 or later)"),
            DatapathError::Bpffs(bpffs::BpffsError::Mount { source, .. })
                if *source == nix::errno::Errno::ENODEV =>
            {
                Some("the BPF filesystem (CONFIG_BPF_SYSCALL)")
            }
            DatapathError::Load(e) if errno(e) == Some(libc::ENOSYS) => {
                Some("the bpf() system call (CONFIG_BPF_SYSCALL)")
            }
            DatapathError::Verify(e) if errno(e) == Some(libc::EINVAL) => {
                Some("XDP programs (CONFIG_BPF_SYSCALL, Linux 5.9 or later)")
            }
            DatapathError::Attach { source, .. } if errno(source) == Some(libc::EOPNOTSUPP) => {
                Some("XDP on this interface in the requested mode")
            }
            DatapathError::Egress(e) => e.missing_feature(),
            _ => None,
        }
    }
}

/// The first OS error number in an error's chain. Netlink errors carry
/// theirs out of reach of `source()`, so they are asked directly.
pub(crate) fn errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        if let Some(netlink) = err.downcast_ref::<aya::sys::NetlinkError>() {
            return netlink.raw_os_error();
        }
        cur = err.source();
    }
    None
}

fn maps_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("maps")
}

fn links_dir(bpffs_dir: &Path) -> PathBuf {
    bpffs_dir.join("links")
}

fn link_path(bpffs_dir: &Path, ifname: &str, mode: AttachMode) -> PathBuf {
    links_dir(bpffs_dir).join(link_file_name(ifname, mode))
}

/// The file name of an interface's pin: `<kind>-<ifname>`. bpffs refuses
/// dots in names, so a `.` of the interface name is stored as `:`, which
/// interface names cannot contain.
pub(crate) fn pin_name(kind: &str, ifname: &str) -> String {
    format!("{kind}-{}", ifname.replace('.', ":"))
}

/// The kind and interface a pin's file name stands for.
pub(crate) fn parse_pin_name(file: &str) -> Option<(&str, String)> {
    let (kind, ifname) = file.split_once('-')?;
    Some((kind, ifname.replace(':', ".")))
}

fn link_file_name(ifname: &str, mode: AttachMode) -> String {
    pin_name(mode.name(), ifname)
}

/// The interface and mode a link pin's file name stands for.
fn parse_link_file_name(file: &str) -> Option<(String, AttachMode)> {
    let (mode, ifname) = parse_pin_name(file)?;
    Some((ifname, AttachMode::from_name(mode)?))
}

/// The pins under `links/` that `parse` recognises: (interface, mode, path),
/// sorted.
pub(crate) fn pins_in_links_dir<M: Ord>(
    bpffs_dir: &Path,
    parse: impl Fn(&str) -> Option<(String, M)>,
) -> Vec<(String, M, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(links_dir(bpffs_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let (ifname, mode) = parse(&file)?;
            Some((ifname, mode, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The pinned XDP links found under `bpffs_dir`: (interface, mode, path).
fn pinned_links(bpffs_dir: &Path) -> Vec<(String, AttachMode, PathBuf)> {
    pins_in_links_dir(bpffs_dir, parse_link_file_name)
}

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The interface a pinned XDP link is attached to, from the kernel's fdinfo
/// of the link (0 once the interface is gone).
fn link_ifindex(link: &FdLink) -> Option<u32> {
    let id = link.info().ok()?.id();
    let fds = std::fs::read_dir("/proc/self/fdinfo").ok()?;
    for fd in fds.filter_map(Result::ok) {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u32>().ok())
        };
        if field("link_id:") == Some(id) {
            return field("ifindex:");
        }
    }
    None
}

/// Prepares the maps directory: accepts a pinned set of this ABI version,
/// or stamps an empty directory before the loader creates the maps in it.
fn prepare_maps(bpffs_dir: &Path) -> Result<(), DatapathError> {
    let dir = maps_dir(bpffs_dir);
    bpffs::ensure(&dir)?;
    stamp::claim(&dir)?;
    Ok(())
}

/// Loads one copy of the program for the counter slot `slot`, creating or
/// reusing the pinned maps.
fn load_program(bpffs_dir: &Path, slot: u32) -> Result<Ebpf, DatapathError> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(maps_dir(bpffs_dir))
        .override_global("cg_ifslot", &slot, true)
        .load(XDP_OBJECT)
        .map_err(DatapathError::Load)?;
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(DatapathError::NoProgram)?
        .try_into()
        .map_err(DatapathError::Verify)?;
    program.load().map_err(DatapathError::Verify)?;
    Ok(ebpf)
}

fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    ebpf.program_mut(XDP_PROGRAM)
        .ok_or(DatapathError::NoProgram)?
        .try_into()
        .map_err(DatapathError::Verify)
}

/// The running datapath.
pub struct Datapath {
    bpffs_dir: PathBuf,
    maps: PolicyMaps,
    attachments: Vec<Attachment>,
    /// Chosen interfaces the filter could not be attached to.
    failures: Vec<AttachFailure>,
    /// The counter slot the next attachment gets.
    next_slot: u32,
    /// The counter slot each interface was given, kept after it goes.
    slots: BTreeMap<String, u32>,
    generation: u32,
}

impl Datapath {
    /// Prepares bpffs, loads the program, writes `policy` into the maps and
    /// attaches to (or adopts) every requested interface. Links pinned for
    /// interfaces no longer requested are removed.
    pub fn start(
        bpffs_dir: &Path,
        interfaces: &[InterfaceRequest],
        policy: &CompiledPolicy,
    ) -> Result<Self, DatapathError> {
        if interfaces.len() > usize::try_from(abi::MAX_IFSLOTS).unwrap_or(usize::MAX) {
            return Err(DatapathError::TooManyInterfaces);
        }
        // Before anything is loaded or attached: a refused set leaves the
        // kernel exactly as it was, the old filter enforcing.
        prepare_maps(bpffs_dir)?;
        bpffs::ensure(&links_dir(bpffs_dir))?;

        let mut programs = Vec::new();
        for slot in 0..interfaces.len() {
            programs.push(load_program(bpffs_dir, u32::try_from(slot).unwrap_or(0))?);
        }
        if programs.is_empty() {
            // Still create the maps so that status and bans work.
            programs.push(load_program(bpffs_dir, 0)?);
        }

        let mut maps = PolicyMaps::open(&maps_dir(bpffs_dir))?;
        let generation = maps.current_config()?.generation.wrapping_add(1);
        maps.apply(policy, generation)?;

        let mut datapath = Datapath {
            bpffs_dir: bpffs_dir.to_owned(),
            maps,
            attachments: Vec::new(),
            failures: Vec::new(),
            next_slot: u32::try_from(interfaces.len()).unwrap_or(abi::MAX_IFSLOTS),
            slots: BTreeMap::new(),
            generation,
        };
        let pinned = pinned_links(bpffs_dir);
        let mut first_failure = None;
        for (slot, (request, ebpf)) in interfaces.iter().zip(programs.iter_mut()).enumerate() {
            let slot = u32::try_from(slot).unwrap_or(0);
            match datapath.attach_one(xdp(ebpf)?, request, slot, &pinned) {
                Ok(attachment) => datapath.attachments.push(attachment),
                // A listed interface not there yet is waited for: stopping would leave every
                // other interface unfiltered, and the start would fail again on each restart.
                Err(e @ DatapathError::NoInterface(_)) if request.required => {
                    datapath.record_failure(&request.name, &e);
                }
                Err(e) if request.required => return Err(e),
                Err(e) => {
                    datapath.record_failure(&request.name, &e);
                    first_failure.get_or_insert(e);
                }
            }
        }
        // One chosen interface that fails must not leave the others unfiltered; none at all
        // is as fatal as a listed one failing.
        if datapath.attachments.is_empty() {
            if let Some(e) = first_failure {
                return Err(e);
            }
        }
        datapath.remove_stale_links(&pinned)?;
        datapath.attach_egress()?;
        Ok(datapath)
    }

    fn record_failure(&mut self, name: &str, error: &DatapathError) {
        let error = crmguard_core::error_chain(error);
        tracing::error!(interface = name, %error, "cannot attach the XDP filter; this interface is NOT filtered, the others are");
        self.failures.retain(|f| f.name != name);
        self.failures.push(AttachFailure {
            name: name.to_owned(),
            error,
        });
    }

    /// Attaches the filter, with its egress recorder, to interfaces that appeared or took the
    /// uplink's role after the start. A failure is recorded in [`Datapath::failures`] and
    /// logged once per distinct error; the others go on. Returns the names attached.
    pub fn attach_more(&mut self, requests: &[InterfaceRequest]) -> Vec<String> {
        // An interface deleted since (and perhaps created again under its name) lost its
        // filter with it: it is forgotten, so that a new device of that name is filtered.
        self.attachments.retain(|a| {
            let present = ifindex(&a.name) == Some(a.ifindex);
            if !present {
                tracing::info!(interface = %a.name, "the filtered interface was removed");
            }
            present
        });
        let mut attached = Vec::new();
        for request in requests {
            if self.attachments.iter().any(|a| a.name == request.name) {
                continue;
            }
            match self.attach_late(request) {
                Ok(()) => {
                    self.failures.retain(|f| f.name != request.name);
                    attached.push(request.name.clone());
                }
                Err(e) => {
                    let error = crmguard_core::error_chain(&e);
                    let known = self
                        .failures
                        .iter()
                        .any(|f| f.name == request.name && f.error == error);
                    if !known {
                        self.record_failure(&request.name, &e);
                    }
                }
            }
        }
        attached
    }

    fn attach_late(&mut self, request: &InterfaceRequest) -> Result<(), DatapathError> {
        // Before the program is loaded: a listed interface that is not there costs a
        // verifier pass on every look otherwise.
        if ifindex(&request.name).is_none() {
            return Err(DatapathError::NoInterface(request.name.clone()));
        }
        let slot = self.free_slot(&request.name)?;
        let mut ebpf = load_program(&self.bpffs_dir, slot)?;
        let pinned = pinned_links(&self.bpffs_dir);
        let mut attachment = self.attach_one(xdp(&mut ebpf)?, request, slot, &pinned)?;
        if slot == self.next_slot {
            self.next_slot = slot.saturating_add(1);
        }
        // The XDP filter is in place and pinned; an egress recorder that fails is logged, as
        // the flow records then miss this interface but the filter holds.
        match tc::Egress::load(&self.bpffs_dir).and_then(|mut egress| {
            egress.attach(&attachment.name, attachment.ifindex, tc::Mechanism::Auto)
        }) {
            Ok(attached) => attachment.egress = Some(attached.mode),
            Err(e) => {
                tracing::error!(interface = %request.name, error = %crmguard_core::error_chain(&e), "cannot attach the egress flow recorder")
            }
        }
        self.attachments.push(attachment);
        Ok(())
    }

    /// The counter slot for an interface attached late: the one it had before when that is
    /// free (an interface deleted and created again keeps its counters), else the next
    /// unused one, else one that an interface since removed left. Slots are never used up
    /// by interfaces that come and go.
    fn free_slot(&self, name: &str) -> Result<u32, DatapathError> {
        let used: BTreeSet<u32> = self.attachments.iter().map(|a| a.slot).collect();
        let before = self.slots.get(name).copied().filter(|s| !used.contains(s));
        let fresh = (self.next_slot < abi::MAX_IFSLOTS).then_some(self.next_slot);
        before
            .or(fresh)
            .or_else(|| (0..abi::MAX_IFSLOTS).find(|s| !used.contains(s)))
            .ok_or(DatapathError::TooManyInterfaces)
    }

    fn attach_one(
        &mut self,
        program: &mut Xdp,
        request: &InterfaceRequest,
        slot: u32,
        pinned: &[(String, AttachMode, PathBuf)],
    ) -> Result<Attachment, DatapathError> {
        self.slots.insert(request.name.clone(), slot);
        let ifindex = ifindex(&request.name)
            .ok_or_else(|| DatapathError::NoInterface(request.name.clone()))?;
        if let Some((_, mode, path)) = pinned.iter().find(|(name, _, _)| *name == request.name) {
            if let Some(adopted) = self.adopt(program, &request.name, ifindex, *mode, path, slot)? {
                if !mode_satisfies(request.mode, *mode) {
                    tracing::warn!(
                        interface = %request.name,
                        attached = mode.name(),
                        "the filter stays in the mode it was attached in; run `crmguard uninstall` and restart to change it"
                    );
                }
                return Ok(adopted);
            }
        }
        self.attach_new(program, &request.name, ifindex, request.mode, slot)
    }

    /// Replaces the program inside a pinned link, keeping the link (and so
    /// the filter) in place throughout. Returns None when the link no longer
    /// belongs to the interface (it was deleted and re-created).
    fn adopt(
        &mut self,
        program: &mut Xdp,
        name: &str,
        ifindex: u32,
        mode: AttachMode,
        path: &Path,
        slot: u32,
    ) -> Result<Option<Attachment>, DatapathError> {
        let adopt_err = |source: ProgramError| DatapathError::Adopt {
            path: path.to_owned(),
            source,
        };
        let link_err = |source| DatapathError::AdoptLink {
            path: path.to_owned(),
            source,
        };
        let pinned = PinnedLink::from_pin(path).map_err(link_err)?;
        let link = FdLink::from(pinned);
        if link_ifindex(&link) != Some(ifindex) {
            tracing::warn!(
                interface = name,
                "pinned XDP link belongs to a removed interface; attaching anew"
            );
            std::fs::remove_file(path).map_err(|source| DatapathError::Remove {
                path: path.to_owned(),
                source,
            })?;
            return Ok(None);
        }
        let link = XdpLink::try_from(link).map_err(link_err)?;
        program.attach_to_link(link).map_err(adopt_err)?;
        tracing::info!(
            interface = name,
            mode = mode.name(),
            "adopted the pinned XDP filter"
        );
        Ok(Some(Attachment {
            name: name.to_owned(),
            ifindex,
            mode,
            slot,
            adopted: true,
            egress: None,
        }))
    }

    fn attach_new(
        &mut self,
        program: &mut Xdp,
        name: &str,
        ifindex: u32,
        setting: ModeSetting,
        slot: u32,
    ) -> Result<Attachment, DatapathError> {
        let attempt = |program: &mut Xdp, mode: AttachMode| {
            program
                .attach_to_if_index(ifindex, mode.xdp_mode())
                .map(|id| (id, mode))
                .map_err(|source| DatapathError::Attach {
                    interface: name.to_owned(),
                    mode: mode.name(),
                    source,
                })
        };
        let (id, mode) = match setting {
            ModeSetting::Native => attempt(program, AttachMode::Native)?,
            ModeSetting::Generic => attempt(program, AttachMode::Generic)?,
            ModeSetting::Auto => match attempt(program, AttachMode::Native) {
                Ok(attached) => attached,
                Err(native) => {
                    tracing::warn!(
                        interface = name,
                        error = %crmguard_core::error_chain(&native),
                        "native XDP is not available on this interface; using generic mode, which is slower"
                    );
                    attempt(program, AttachMode::Generic)?
                }
            },
        };
        let link = program
            .take_link(id)
            .map_err(|source| DatapathError::Attach {
                interface: name.to_owned(),
                mode: mode.name(),
                source,
            })?;
        let link = FdLink::try_from(link).map_err(|_| DatapathError::NoLink {
            interface: name.to_owned(),
        })?;
        let path = link_path(&self.bpffs_dir, name, mode);
        link.pin(&path).map_err(|source| DatapathError::Pin {
            interface: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        self.maps.clear_counters(slot)?;
        tracing::info!(
            interface = name,
            mode = mode.name(),
            "attached the XDP filter"
        );
        Ok(Attachment {
            name: name.to_owned(),
            ifindex,
            mode,
            slot,
            adopted: false,
            egress: None,
        })
    }

    /// Attaches (or adopts) the egress flow recorder on every attached
    /// interface, and detaches it from interfaces no longer configured.
    fn attach_egress(&mut self) -> Result<(), DatapathError> {
        let pinned = tc::pinned(&self.bpffs_dir);
        if !self.attachments.is_empty() {
            let mut egress = tc::Egress::load(&self.bpffs_dir)?;
            for attachment in &mut self.attachments {
                let attached =
                    egress.attach(&attachment.name, attachment.ifindex, tc::Mechanism::Auto)?;
                attachment.egress = Some(attached.mode);
            }
        }
        let wanted: BTreeSet<&str> = self.attachments.iter().map(|a| a.name.as_str()).collect();
        tc::remove_stale(&pinned, &wanted)?;
        Ok(())
    }

    /// Detaches links pinned for interfaces that are no longer configured.
    fn remove_stale_links(
        &mut self,
        pinned: &[(String, AttachMode, PathBuf)],
    ) -> Result<(), DatapathError> {
        let wanted: BTreeSet<&str> = self.attachments.iter().map(|a| a.name.as_str()).collect();
        for (name, _, path) in pinned {
            if !wanted.contains(name.as_str()) && path.exists() {
                tracing::info!(interface = %name, "detaching the filter from an interface no longer configured");
                std::fs::remove_file(path).map_err(|source| DatapathError::Remove {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Writes a new policy and publishes it as the next generation.
    pub fn apply(&mut self, policy: &CompiledPolicy) -> Result<u32, DatapathError> {
        let generation = self.generation.wrapping_add(1);
        self.maps.apply(policy, generation)?;
        self.generation = generation;
        Ok(generation)
    }

    /// Compares the kernel's policy in force with `policy`; when they
    /// differ (someone edited the maps by hand), swaps in a fresh copy as a
    /// new generation. Returns how many entries differed.
    pub fn reconcile(&mut self, policy: &CompiledPolicy) -> Result<u64, DatapathError> {
        let divergence = self.maps.divergence(policy, self.generation)?.entries;
        if divergence > 0 {
            self.apply(policy)?;
        }
        Ok(divergence)
    }

    /// Releases the maps of the policy that is no longer in force.
    pub fn release_previous(&mut self) -> Result<(), DatapathError> {
        Ok(self.maps.release_inactive()?)
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Chosen interfaces the filter could not be attached to, in the order they failed.
    pub fn failures(&self) -> &[AttachFailure] {
        &self.failures
    }

    /// Counters of every attached interface.
    pub fn counters(&self) -> Result<Vec<Counter>, DatapathError> {
        let mut out = Vec::new();
        for attachment in &self.attachments {
            for (action, reason, stats) in self.maps.read_counters(attachment.slot)? {
                out.push(Counter {
                    interface: attachment.name.clone(),
                    action,
                    reason,
                    stats,
                });
            }
        }
        Ok(out)
    }
}

/// One counter of `cg_stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub interface: String,
    pub action: Action,
    pub reason: Reason,
    pub stats: abi::Stats,
}

fn mode_satisfies(setting: ModeSetting, mode: AttachMode) -> bool {
    match setting {
        ModeSetting::Auto => true,
        ModeSetting::Native => mode == AttachMode::Native,
        ModeSetting::Generic => mode == AttachMode::Generic,
    }
}

/// Removes crmguard from the kernel: every pinned link (which detaches the
/// filter and the egress recorder) and every pinned map under `bpffs_dir`.
/// Returns the interfaces the filter was removed from.
pub fn uninstall(bpffs_dir: &Path) -> Result<Vec<String>, DatapathError> {
    // First: a netlink egress filter is found only through its pin.
    tc::uninstall(bpffs_dir)?;
    let mut removed = Vec::new();
    for (name, _, path) in pinned_links(bpffs_dir) {
        std::fs::remove_file(&path).map_err(|source| DatapathError::Remove { path, source })?;
        removed.push(name);
    }
    for dir in [links_dir(bpffs_dir), maps_dir(bpffs_dir)] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|source| DatapathError::Remove { path, source })?;
            }
        }
        if dir.exists() {
            std::fs::remove_dir(&dir).map_err(|source| DatapathError::Remove {
                path: dir.clone(),
                source,
            })?;
        }
    }
    if bpffs_dir.exists() && std::fs::read_dir(bpffs_dir).is_ok_and(|mut d| d.next().is_none()) {
        // Only an empty directory is removed: it may be a mount point.
        let _ = std::fs::remove_dir(bpffs_dir);
    }
    Ok(removed)
}

/// Loads the program for tests and benchmarks against pinned maps in
/// `bpffs_dir`, without attaching it anywhere.
/// A load that fails removes what it pinned, so that a failing test leaves
/// nothing behind.
pub fn load_for_test(bpffs_dir: &Path) -> Result<(Ebpf, PolicyMaps), DatapathError> {
    prepare_maps(bpffs_dir)?;
    let loaded = load_program(bpffs_dir, 0)
        .and_then(|ebpf| Ok((ebpf, PolicyMaps::open(&maps_dir(bpffs_dir))?)));
    if loaded.is_err() {
        let _ = uninstall(bpffs_dir);
    }
    loaded
}

/// The program handle of a loaded object, for `TestRun`.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    xdp(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip_without_dots() {
        for (ifname, mode) in [
            ("eth0", AttachMode::Native),
            ("eth0.100", AttachMode::Generic),
            ("veth-a.b.c", AttachMode::Native),
        ] {
            let file = link_file_name(ifname, mode);
            assert!(!file.contains('.'), "{file}");
            assert_eq!(parse_link_file_name(&file), Some((ifname.to_owned(), mode)));
        }
        assert_eq!(parse_link_file_name("hardware-eth0"), None);
    }
}
