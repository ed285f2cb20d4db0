//! dkimpy (PyPI `dkimpy==1.1.8`, with `pynacl` for Ed25519) as an
//! independent DKIM verifier: a signature it accepts is one the rest of the
//! world's verifiers accept, not one our own code agrees with itself about.
//!
//! The DNS is a function handed to `dkim.verify(dnsfunc=...)` that answers
//! from the records the test gives, so no resolver is involved.

use std::fs;
use std::process::Command;

use crate::python_with;

/// The package spec, the same string everywhere so one venv serves all.
const PACKAGE: &str = "dkimpy[ed25519]==1.1.8";

const SCRIPT: &str = r#"
import sys, dkim, logging
records = {}
for line in open(sys.argv[1], encoding="utf-8"):
    name, _, value = line.rstrip("\n").partition("\t")
    records[name.lower().rstrip(".")] = value.encode()
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.lower().rstrip("."))
message = open(sys.argv[2], "rb").read()
log = logging.getLogger("dkim")
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
d = dkim.DKIM(message, logger=log)
try:
    ok = d.verify(dnsfunc=dnsfunc)
except dkim.DKIMException as e:
    print("fail:", e)
    sys.exit(1)
print("pass" if ok else "fail")
sys.exit(0 if ok else 1)
"#;

/// Verifies the first `DKIM-Signature:` of `message` with dkimpy, the DNS
/// answering `records` (`("s1._domainkey.example.test", "v=DKIM1; ...")`).
///
/// # Errors
///
/// dkimpy's verdict and log when it does not pass.
///
/// # Panics
///
/// When the venv cannot be made or python cannot run.
pub fn dkimpy_verify(message: &[u8], records: &[(&str, &str)]) -> Result<(), String> {
    let python = python_with(PACKAGE, "nacl, dkim");
    let dir = tempfile::tempdir().expect("tempdir");
    let zone: String = records
        .iter()
        .map(|(name, value)| format!("{name}\t{value}\n"))
        .collect();
    fs::write(dir.path().join("records"), zone).expect("write records");
    fs::write(dir.path().join("message"), message).expect("write message");
    fs::write(dir.path().join("verify.py"), SCRIPT).expect("write script");
    let out = Command::new(python)
        .arg(dir.path().join("verify.py"))
        .arg(dir.path().join("records"))
        .arg(dir.path().join("message"))
        .output()
        .expect("run dkimpy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.trim() == "pass" {
        Ok(())
    } else {
        Err(format!(
            "dkimpy: {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
