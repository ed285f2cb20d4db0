//! A Maildir that maildrop delivers into.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::{read_files, require, set_mode};

/// A Maildir with a maildrop filter file that delivers into it.
#[derive(Debug)]
pub struct MaildropBox {
    dir: tempfile::TempDir,
}

impl MaildropBox {
    /// Creates the Maildir (`maildirmake.maildrop`) and the mailfilter.
    pub fn new() -> Self {
        require("maildrop", "maildrop");
        let make = require("maildirmake.maildrop", "maildrop");
        let dir = tempfile::Builder::new()
            .prefix("maildrop")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let status = Command::new(make)
            .arg(d.join("Maildir"))
            .status()
            .expect("run maildirmake.maildrop");
        assert!(status.success(), "maildirmake.maildrop failed: {status}");
        fs::write(
            d.join("mailfilter"),
            format!("DEFAULT=\"{}/Maildir/\"\nto \"$DEFAULT\"\n", d.display()),
        )
        .expect("write mailfilter");
        set_mode(&d.join("mailfilter"), 0o600);
        Self { dir }
    }

    /// The filter file to give maildrop.
    pub fn mailfilter(&self) -> PathBuf {
        self.dir.path().join("mailfilter")
    }

    /// The messages delivered (`Maildir/new`), by file name.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        read_files(&self.dir.path().join("Maildir/new"))
    }
}

impl Default for MaildropBox {
    fn default() -> Self {
        Self::new()
    }
}
