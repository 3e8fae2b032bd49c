//! The configuration loader on arbitrary TOML text: the raw serde parse, the validation into a
//! [`Config`] and, for a configuration that validates, the policy compile.
//!
//! Checked: no panic; every error names the file and a place in it (a line, or a key, or
//! both), and a line it names is within the text; a configuration that validates compiles, or
//! the compile names the services that clash or the map that overflows.

use std::path::Path;

use crmguard_core::config::{self, Config};
use crmguard_core::policy;

/// The name the text is reported under, as the agent's own file would be.
const FILE: &str = "/etc/crmguard/crmguard.toml";

/// The example configuration and the embedded default policy: valid, and between them every
/// section there is.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "example".to_owned(),
            include_bytes!("../../config/crmguard.example.toml").to_vec(),
        ),
        (
            "default".to_owned(),
            config::DEFAULT_POLICY_TOML.as_bytes().to_vec(),
        ),
    ]
}

/// Parses `data` (not UTF-8 bytes replaced) as the configuration file.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match config::parse(&text, Path::new(FILE)) {
        Ok(config) => compiles(&config),
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error with no problem in it");
            let lines = text.lines().count().max(1);
            for error in &errors.0 {
                assert_eq!(error.file, Path::new(FILE), "{error}");
                assert!(
                    error.line > 0 || !error.key.is_empty(),
                    "an error that names neither a line nor a key: {error}"
                );
                // A span at the very end of the text (a missing value) is on the line after
                // the last newline.
                assert!(
                    error.line <= lines + 1,
                    "line {} of a text of {lines} lines: {error}",
                    error.line
                );
                assert!(!error.message.is_empty(), "an error without a message");
            }
        }
    }
}

fn compiles(config: &Config) {
    match policy::compile(config) {
        Ok(compiled) => {
            assert_eq!(
                compiled.deny_rules.len(),
                compiled.deny4.len()
                    + compiled.deny6.len()
                    + compiled.deny4_lpm.len()
                    + compiled.deny6_lpm.len(),
                "a deny rule without its entry, or an entry without its rule"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
