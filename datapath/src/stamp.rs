//! The ABI stamp of a set of pinned maps: `maps/cg_abi[0]` holds the
//! `CG_ABI_VERSION` of the agent that created the set.
//!
//! The loader reuses a pinned map by name without comparing its definition,
//! so an agent of another ABI version would read and write the old maps with
//! its own layout. The stamp is created, written and pinned before the loader
//! creates any other map, so every set this agent makes carries it.
//!
//! A set without a stamp was pinned by an agent from before stamps. Those
//! agents all spoke [`LAST_UNSTAMPED_VERSION`], so while this agent speaks it
//! too such a set is adopted and stamped: an upgrade from them keeps the
//! filter enforcing, as every upgrade must. An agent of any later version
//! refuses an unstamped set, whose layout it cannot know.
//!
//! Refusing a set changes nothing in the kernel: the program attached to the
//! old set keeps enforcing its last policy. This module must never remove or
//! replace a pinned map.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError};

use super::sys;
use crmguard_core::abi;

/// The stamp's file name under the maps directory, as named in maps.h.
pub const STAMP_MAP: &str = "cg_abi";

#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error(
        "the maps pinned in {dir} are of crmguard ABI version {found}; this agent speaks version {expected}",
        expected = abi::ABI_VERSION
    )]
    Foreign { dir: PathBuf, found: u32 },
    #[error(
        "the maps pinned in {dir} record no ABI version (an agent older than ABI stamps made them); this agent speaks version {expected}",
        expected = abi::ABI_VERSION
    )]
    Unstamped { dir: PathBuf },
    #[error("cannot read the ABI stamp {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot list {dir}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the ABI stamp")]
    Create(#[source] std::io::Error),
    #[error("cannot open the ABI stamp just created")]
    Open(#[source] MapError),
    #[error("cannot pin the ABI stamp at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

impl StampError {
    /// Whether the pinned set belongs to another ABI version (the command
    /// then exits 69 and says what to do).
    pub fn is_foreign(&self) -> bool {
        matches!(
            self,
            StampError::Foreign { .. } | StampError::Unstamped { .. }
        )
    }
}

/// The ABI version of every agent that pinned maps without stamping them: the
/// version of the header when the stamp was introduced. Never change it.
pub const LAST_UNSTAMPED_VERSION: u32 = 2;

/// What an operator can do about a refused set, for the command's message.
pub const FOREIGN_ADVICE: &str = "refusing to adopt the filter of another crmguard version. \
    Nothing was detached: the filter already attached keeps enforcing the last policy it was \
    given. To move to this version, run `crmguard uninstall` \
    and start crmguard again (the host is unfiltered between the two); to keep the running \
    filter managed instead, start the crmguard version that pinned it";

/// Accepts the set pinned in `dir` when it carries this agent's ABI version,
/// stamps `dir` when it holds no maps yet or holds an unstamped set of
/// [`LAST_UNSTAMPED_VERSION`] that this agent speaks, and refuses anything else.
pub fn claim(dir: &Path) -> Result<(), StampError> {
    let path = dir.join(STAMP_MAP);
    if path.exists() {
        let found = read(&path)?;
        if found != abi::ABI_VERSION {
            return Err(StampError::Foreign {
                dir: dir.to_owned(),
                found,
            });
        }
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| StampError::List {
        dir: dir.to_owned(),
        source,
    })?;
    if entries.filter_map(Result::ok).next().is_some() {
        if abi::ABI_VERSION != LAST_UNSTAMPED_VERSION {
            return Err(StampError::Unstamped {
                dir: dir.to_owned(),
            });
        }
        tracing::warn!(
            dir = %dir.display(),
            version = LAST_UNSTAMPED_VERSION,
            "adopting maps pinned before ABI stamps existed, and stamping them"
        );
    }
    create(&path)
}

/// The version a stamp holds.
pub fn read(path: &Path) -> Result<u32, StampError> {
    let read_err = |source| StampError::Read {
        path: path.to_owned(),
        source,
    };
    let data = MapData::from_pin(path).map_err(read_err)?;
    let stamp: Array<MapData, u32> =
        Array::try_from(Map::from_map_data(data).map_err(read_err)?).map_err(read_err)?;
    stamp.get(&0, 0).map_err(read_err)
}

/// Creates the stamp with this agent's version and pins it. The map is full
/// before it is pinned, so a stamp found pinned is never empty.
fn create(path: &Path) -> Result<(), StampError> {
    let fd = sys::map_create(sys::BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, STAMP_MAP)
        .map_err(StampError::Create)?;
    sys::update_all(
        fd.as_fd(),
        4,
        &0u32.to_ne_bytes(),
        4,
        &abi::ABI_VERSION.to_ne_bytes(),
    )
    .map_err(StampError::Create)?;
    let data = MapData::from_fd(fd).map_err(StampError::Open)?;
    data.pin(path).map_err(|source| StampError::Pin {
        path: path.to_owned(),
        source,
    })
}
