//! `slimta dkim keygen`: makes a DKIM signing key for `[policy.NAME]
//! type = "dkim_sign"` and prints the DNS record that publishes it.
//!
//! Decisions:
//! - RSA 2048 by default (what every receiver verifies; RFC 8301's
//!   recommendation), `--ed25519` for RFC 8463 keys (small, fast, but not
//!   yet verified everywhere: sign with both if in doubt, two sections).
//! - The key goes to `DIR/SELECTOR.key`, PEM PKCS#8, created with mode 0600
//!   and never over an existing file (a key that is overwritten while its
//!   record is published makes every signature fail).
//! - stdout carries only the zone-file line, the TXT text cut into quoted
//!   strings of 255 characters at most (a TXT string's limit, which a
//!   2048-bit RSA key's record exceeds); what was written goes to stderr.
//!
//! Exit codes: 0 written, 1 the key could not be made or written, 2 a
//! usage problem (as for the daemon).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use slimta::policy::dkim_key::{DkimKey, KeyAlgorithm};
use slimta::policy::dkim_sign::is_valid_selector;

use crate::config::fields::check_domain;

/// `slimta dkim ...`: DKIM key management.
#[derive(Debug, Args)]
pub struct DkimCommand {
    /// What to do.
    #[command(subcommand)]
    pub action: DkimAction,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum DkimAction {
    /// Make a signing key, write it to DIR/SELECTOR.key (mode 0600) and
    /// print the DNS TXT record to publish.
    Keygen {
        /// The signing domain (`d=`).
        #[arg(long)]
        domain: String,
        /// The selector (`s=`): the key's name under `_domainkey`.
        #[arg(long)]
        selector: String,
        /// An Ed25519 key instead of RSA.
        #[arg(long)]
        ed25519: bool,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048, conflicts_with = "ed25519")]
        bits: usize,
        /// The directory to write the key into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

const EXIT_USAGE: u8 = 2;

/// Runs the command.
pub fn run(command: &DkimCommand) -> ExitCode {
    let DkimAction::Keygen {
        domain,
        selector,
        ed25519,
        bits,
        out,
    } = &command.action;
    let domain = match check_domain(domain) {
        Ok(d) => d,
        Err(why) => {
            eprintln!("slimta dkim keygen: invalid --domain \"{domain}\": {why}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !is_valid_selector(selector) {
        eprintln!(
            "slimta dkim keygen: invalid --selector \"{selector}\" (letters, digits, '-' and '.')"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let made = if *ed25519 {
        DkimKey::generate_ed25519()
    } else {
        DkimKey::generate_rsa(*bits)
    };
    let (key, pem) = match made {
        Ok(made) => made,
        Err(e) => {
            eprintln!("slimta dkim keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = out.join(format!("{selector}.key"));
    let written = std::fs::create_dir_all(out).and_then(|()| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written {
        eprintln!("slimta dkim keygen: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let kind = match key.algorithm() {
        KeyAlgorithm::Rsa { bits } => format!("RSA {bits} bits"),
        KeyAlgorithm::Ed25519 => "Ed25519".to_owned(),
    };
    eprintln!(
        "slimta dkim keygen: wrote {} ({kind}, mode 0600); publish this TXT record at \
         {selector}._domainkey.{domain}:",
        path.display()
    );
    println!("{}", key.zone_line(&domain, selector));
    ExitCode::SUCCESS
}
