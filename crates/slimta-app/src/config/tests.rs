//! Table-driven tests of the schema: good files with their parsed values,
//! bad files with the exact error lines an operator would see.

use super::*;
use crate::kinds::relay::{Agent, Mx, StaticSmtp};
use crate::kinds::storage::Disk;
use slimta::relay::smtp::{ClientOptions, Credentials, SourceSelection, TlsMode};

/// A minimal valid file; bad cases append to or replace parts of it.
const MINIMAL: &str = r#"
[edge.in]
type = "smtp"
listen = ["127.0.0.1:2525"]
queue = "main"

[queue.main]
type = "memory"
relay = "out"

[relay.out]
type = "blackhole"
"#;

fn errors_of(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(config) => panic!("expected errors, parsed: {config:#?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn minimal_file_gets_every_default() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.process.log_level, "info");
    assert_eq!(config.process.log_format, LogFormat::Text);
    assert!(!config.process.hostname.is_empty());
    assert_eq!(config.process.user, None);
    assert_eq!(config.process.pid_file, None);
    assert_eq!(config.dns, DnsConfig::default());

    let edge = &config.edges["in"];
    assert_eq!(
        *edge,
        EdgeConfig {
            kind: EdgeKind::Smtp,
            listen: vec!["127.0.0.1:2525".parse().unwrap()],
            queue: "main".into(),
            accept_domains: vec![],
            checks: vec![],
            max_size: 10_485_760,
            max_recipients: 100,
            max_connections: 1000,
            command_timeout: secs(300),
            data_timeout: secs(600),
            listen_unix: vec![],
            tls: None,
            tls_immediately: false,
            proxy_protocol: ProxyProtocol::Off,
            auth: None,
            reverse_dns: true,
        }
    );

    let queue = &config.queues["main"];
    assert_eq!(queue.storage.kind.name, "memory");
    assert!(!queue.storage.durable());
    assert_eq!(queue.storage.spool(), None);
    assert_eq!(
        *queue,
        QueueConfig {
            storage: queue.storage.clone(),
            relay: "out".into(),
            max_concurrency: 100,
            bounce_headers_only: false,
            postmaster: None,
            delay_warning: None,
            stats_interval: Some(secs(60)),
            policies: vec![],
            relay_policies: vec![],
            retry: RetryConfig {
                initial_delay: secs(300),
                factor: 2.0,
                max_delay: secs(3600),
                max_age: secs(5 * 86400),
                maximum: 0,
            },
        }
    );
    assert_eq!(config.relays["out"].kind.name, "blackhole");
    assert!(config.unsupported().is_empty());
}

/// The keys issues 2, 4 and 5 name, with non-default values everywhere.
const FULL: &str = r#"
[process]
hostname = "MX.Example.Test."
log_level = "info,slimta=debug"
log_format = "json"
user = "mail"
group = "mail"
pid_file = "/run/slimta.pid"

[dns]
nameservers = ["127.0.0.1:5353", "::1"]

[edge.in]
type = "smtp"
listen = ["127.0.0.1:2525", "[::1]:2525"]
queue = "main"
accept_domains = ["Example.Test", "other.test."]
max_size = 1000
max_recipients = 5
max_connections = 7
command_timeout = "10s"
data_timeout = "2m"

[queue.main]
type = "disk"
path = "/var/spool/slimta"
journal_max_message = 65536
relay = "out"
max_concurrency = 3
bounce_headers_only = true
postmaster = "postmaster@example.test"
policies = ["add_date_header", "add_message_id_header", "add_received_header", "by_domain"]

[policy.by_domain]
type = "recipient_domain_split"

[queue.main.retry]
initial_delay = "1m"
factor = 3
max_delay = "2h"
max_age = "1d"
maximum = 9

[queue.mx]
type = "memory"
relay = "mx"

[relay.out]
type = "static"
host = "127.0.0.1"
port = 2600
pool_size = 2
idle_timeout = "5s"
connect_timeout = "3s"
command_timeout = "4s"
tls = "off"
tls_verify = false
source_addresses = ["127.0.0.1", "::1"]
ehlo_as = "relay.example.test"
chunking = false

[relay.mx]
type = "mx"
port = 2525
force_mx = { "Example.Test" = "127.0.0.2" }
"#;

#[test]
fn full_file_keeps_every_value() {
    let config = parse(FULL).unwrap();
    assert_eq!(
        config.process,
        ProcessConfig {
            hostname: "mx.example.test".into(),
            log_level: "info,slimta=debug".into(),
            log_format: LogFormat::Json,
            user: Some("mail".into()),
            group: Some("mail".into()),
            pid_file: Some("/run/slimta.pid".into()),
        }
    );
    assert_eq!(
        config.dns.nameservers,
        vec![
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    let edge = &config.edges["in"];
    assert_eq!(
        edge.listen,
        vec![
            "127.0.0.1:2525".parse::<SocketAddr>().unwrap(),
            "[::1]:2525".parse().unwrap()
        ]
    );
    assert_eq!(edge.accept_domains, ["example.test", "other.test"]);
    assert_eq!(
        (edge.max_size, edge.max_recipients, edge.max_connections),
        (1000, 5, 7)
    );
    assert_eq!(
        (edge.command_timeout, edge.data_timeout),
        (secs(10), secs(120))
    );

    let queue = &config.queues["main"];
    assert_eq!(queue.storage.kind.name, "disk");
    assert_eq!(
        queue.storage.settings_as::<Disk>(),
        Some(&Disk {
            path: "/var/spool/slimta".into(),
            journal_max_message: 65536,
        })
    );
    assert_eq!(queue.max_concurrency, 3);
    assert!(queue.bounce_headers_only);
    assert_eq!(queue.postmaster.as_deref(), Some("postmaster@example.test"));
    let names: Vec<(&str, &str)> = queue
        .policies
        .iter()
        .map(|p| (p.name.as_str(), p.kind.name))
        .collect();
    assert_eq!(
        names,
        [
            ("add_date_header", "add_date_header"),
            ("add_message_id_header", "add_message_id_header"),
            ("add_received_header", "add_received_header"),
            ("by_domain", "recipient_domain_split"),
        ]
    );
    assert!(queue.relay_policies.is_empty());
    assert_eq!(
        queue.retry,
        RetryConfig {
            initial_delay: secs(60),
            factor: 3.0,
            max_delay: secs(7200),
            max_age: secs(86400),
            maximum: 9,
        }
    );

    let Some(out) = config.relays["out"].settings_as::<StaticSmtp>() else {
        panic!("{:?}", config.relays["out"]);
    };
    assert_eq!((out.host.as_str(), out.port), ("127.0.0.1", 2600));
    assert_eq!(
        out.client,
        ClientOptions::new()
            .ehlo_as("relay.example.test")
            .connect_timeout(secs(3))
            .command_timeout(secs(4))
            .pool_size(2)
            .idle_timeout(secs(5))
            .tls(TlsMode::Off)
            .tls_verify(false)
            .source_addresses(["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()])
            .source_selection(SourceSelection::RoundRobin)
            .allow_plaintext_auth(false)
            .chunking(false)
    );
    let Some(mx) = config.relays["mx"].settings_as::<Mx>() else {
        panic!("{:?}", config.relays["mx"]);
    };
    assert_eq!(mx.port, 2525);
    assert_eq!(mx.force_mx["example.test"], "127.0.0.2");
    assert_eq!(
        mx.client.get_tls_verify(),
        Some(false),
        "opportunistic MX does not verify"
    );
    assert_eq!(mx.client.get_tls(), Some(TlsMode::Opportunistic));
    assert!(mx.client.get_chunking(), "BDAT when offered, by default");
    assert!(config.unsupported().is_empty());
}

#[test]
fn embedded_default_is_safe() {
    let config = Config::embedded_default();
    assert!(config.unsupported().is_empty());
    let edge = &config.edges["in"];
    assert_eq!(edge.kind, EdgeKind::Smtp);
    assert_eq!(edge.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
    assert!(edge.accept_domains.is_empty(), "never an open relay");
    let queue = &config.queues[&edge.queue];
    assert_eq!(
        queue.storage.settings_as::<Disk>(),
        Some(&Disk {
            path: "./slimta-spool".into(),
            journal_max_message: 1 << 20,
        })
    );
    assert!(queue.storage.durable());
    assert_eq!(config.relays[&queue.relay].kind.name, "mx");
    assert!(config.relays[&queue.relay].settings_as::<Mx>().is_some());
}

/// Each case: what to append to [`MINIMAL`] (or a whole file when it starts
/// with `!`), and the exact error lines expected, in order.
const BAD: &[(&str, &[&str])] = &[
    (
        "!this is = = not toml",
        &["line 1, column 6: TOML syntax: key with no value, expected `=`"],
    ),
    (
        "!",
        &["edge: no edge configured: add an [edge.NAME] section so slimta listens somewhere"],
    ),
    (
        "[edge.in2]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2526\", \"x\", 7]\nqueue = \"main\"",
        &[
            "edge.in2.listen[1]: invalid socket address \"x\" (expected IP:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\")",
            "edge.in2.listen[2]: expected a string, found integer",
        ],
    ),
    (
        "[edge.in2]\ntype = \"smtp\"\nlisten = []\nqueue = \"nope\"\nbogus = 1",
        &[
            "edge.in2.listen: must list at least one address",
            "edge.in2.queue: no queue named \"nope\"",
            "edge.in2.bogus: unknown key (expected one of: accept_domains, auth, checks, command_timeout, data_timeout, listen, max_connections, max_recipients, max_size, proxy_protocol, queue, reverse_dns, tls, tls_immediately, type)",
        ],
    ),
    (
        "[edge.in2]\nlisten = [\"127.0.0.1:2525\"]",
        &[
            "edge.in2.type: missing required key",
            "edge.in2.queue: missing required key",
        ],
    ),
    (
        "[edge.in2]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2525\"]\nqueue = \"main\"",
        &["edge.in2.listen[0]: 127.0.0.1:2525 is already used by edge.in.listen[0]"],
    ),
    (
        "[edge.in2]\ntype = \"smtpd\"\nlisten = \"127.0.0.1:2526\"\nqueue = \"main\"\nmax_size = -1\nmax_recipients = 0\ncommand_timeout = \"soon\"\ndata_timeout = 600\naccept_domains = [\"a@b\", \"\"]",
        &[
            "edge.in2.type: unknown value \"smtpd\" (expected one of: \"smtp\", \"lmtp\", \"http\")",
            "edge.in2.listen: expected an array, found string",
            "edge.in2.accept_domains[0]: invalid domain \"a@b\": only letters, digits, '-' and '_' are allowed in a label",
            "edge.in2.accept_domains[1]: invalid domain \"\": empty",
            "edge.in2.max_size: must be between 1 and 18446744073709551615, found -1",
            "edge.in2.max_recipients: must be between 1 and 4294967295, found 0",
            "edge.in2.command_timeout: invalid duration \"soon\" (expected e.g. \"300s\", \"5m\", \"5d\"): expected number at 0",
            "edge.in2.data_timeout: expected a duration string such as \"300s\", found integer",
        ],
    ),
    (
        "[queue.q2]\ntype = \"disk\"\nrelay = \"out2\"",
        &[
            "queue.q2.path: missing required key",
            "queue.q2.relay: no relay named \"out2\"",
        ],
    ),
    (
        "[queue.q2]\ntype = \"memory\"\npath = \"/x\"\nrelay = \"out\"\npolicies = [\"add_date_header\", \"spam\", \"add_date_header\"]\npostmaster = \"nobody\"\nbounce_headers_only = \"yes\"",
        &[
            "queue.q2.bounce_headers_only: expected a boolean, found string",
            "queue.q2.postmaster: invalid address \"nobody\" (expected local@domain, without <>)",
            "queue.q2.policies[1]: no policy named \"spam\" (define [policy.spam] with a type, or use one of: \"add_date_header\", \"add_message_id_header\", \"add_received_header\", \"recipient_split\", \"recipient_domain_split\")",
            "queue.q2.policies[2]: \"add_date_header\" is listed twice",
            "queue.q2.path: unknown key for type \"memory\"",
        ],
    ),
    (
        "[queue.q2]\ntype = \"tape\"\nrelay = \"out\"",
        &[
            "queue.q2.type: unknown value \"tape\" (expected one of: \"memory\", \"disk\", \"redis\", \"cloud\")",
        ],
    ),
    (
        "[queue.main.retry]\ninitial_delay = \"2h\"\nfactor = 0.5\nmax_delay = \"1h\"\nmaximum = -1\nmax_age = \"0s\"\njitter = true",
        &[
            "queue.main.retry.factor: must be a number of at least 1.0, found 0.5",
            "queue.main.retry.max_age: must be longer than zero",
            "queue.main.retry.maximum: must be between 0 and 4294967295, found -1",
            "queue.main.retry.max_delay: shorter than initial_delay (1h < 2h)",
            "queue.main.retry.jitter: unknown key (expected one of: factor, initial_delay, max_age, max_delay, maximum)",
        ],
    ),
    (
        "[queue.d1]\ntype = \"disk\"\npath = \"/spool\"\nrelay = \"out\"\n[queue.d2]\ntype = \"disk\"\npath = \"/spool\"\nrelay = \"out\"",
        &["queue.d2.path: already the spool of queue \"d1\""],
    ),
    (
        "[relay.s]\ntype = \"static\"\nport = 0\nforce_mx = {}\ntls = \"maybe\"\ncredentials = { username = \"u\" }",
        &[
            "relay.s.host: missing required key",
            "relay.s.port: must be between 1 and 65535, found 0",
            "relay.s.tls: unknown value \"maybe\" (expected one of: \"off\", \"opportunistic\", \"required\", \"immediate\")",
            "relay.s.credentials.password: missing required key",
            "relay.s.force_mx: unknown key for type \"static\"",
        ],
    ),
    (
        "[relay.m]\ntype = \"mx\"\nforce_mx = { \"bad domain\" = \"x\", \"ok.test\" = 1 }\nsource_addresses = [\"localhost\"]",
        &[
            "relay.m.force_mx.\"bad domain\": invalid domain \"bad domain\": only letters, digits, '-' and '_' are allowed in a label",
            "relay.m.force_mx.\"ok.test\": expected a string, found integer",
            "relay.m.source_addresses[0]: invalid IP address \"localhost\"",
        ],
    ),
    (
        "[relay.b]\ntype = \"blackhole\"\nhost = \"x\"\n[relay.c]\ntype = \"carrier-pigeon\"",
        &[
            "relay.b.host: unknown key for type \"blackhole\"",
            "relay.c.type: unknown value \"carrier-pigeon\" (expected one of: \"static\", \"mx\", \"blackhole\", \"lmtp\", \"http\", \"pipe\", \"maildrop\", \"dovecot\")",
        ],
    ),
    (
        "[relay.l]\ntype = \"lmtp\"\n[relay.h]\ntype = \"http\"\nurl = \"ftp://x\"\n[relay.p]\ntype = \"pipe\"\ncommand = []",
        &[
            "relay.h.url: invalid URL \"ftp://x\" (expected http:// or https://)",
            "relay.l.path: missing required key (an LMTP relay needs path or host)",
            "relay.p.command: must name at least the program",
        ],
    ),
    (
        "[policy.split]\ntype = \"recipient_domain_split\"\n[policy.dk]\ntype = \"dkim_sign\"\n[policy.x]\ntype = \"nope\"\n[policy.h]\ntype = \"add_date_header\"\ncolor = 1\n[policy.n]\n[queue.q3]\ntype = \"memory\"\nrelay = \"out\"\npolicies = [\"split\", \"dk\"]\nrelay_policies = [\"add_date_header\", 7]",
        &[
            "policy.dk.domain: missing required key",
            "policy.h.color: unknown key (expected one of: type)",
            "policy.n.type: missing required key",
            "policy.x.type: unknown value \"nope\" (expected one of: \"add_date_header\", \"add_message_id_header\", \"add_received_header\", \"recipient_split\", \"recipient_domain_split\", \"forward\", \"spamassassin\", \"rspamd\", \"dkim_sign\", \"authenticate\", \"milter\")",
            "queue.q3.relay_policies[1]: expected a string, found integer",
            "queue.q3.relay_policies[0]: policy \"add_date_header\" (type \"add_date_header\") cannot run in relay_policies; list it in policies",
        ],
    ),
    (
        "[check.users]\ntype = \"recipient_list\"\naddresses = [\"nobody\"]\n[check.milter]\ntype = \"milter\"\n[check.s]\ntype = \"spf\"\nfail = { code = 550, message = \"5.7.1 {resaon}\" }\n[check.x]\ntype = \"greylist\"\n[check.empty]\ntype = \"recipient_list\"\naddresses = []\nzone = \"z\"\n[edge.e2]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:2526\"]\nqueue = \"main\"\nchecks = [\"users\", \"nope\", \"milter\", \"nope\"]",
        &[
            "check.empty.addresses: must list at least one address",
            "check.empty.zone: unknown key (expected one of: addresses, type)",
            "check.milter.type: check type \"milter\" is not built yet (built: \"recipient_list\", \"recipients\", \"senders\", \"spf\", \"dnsbl\")",
            "check.s.fail: unknown placeholder {resaon} (this reply can use: {reason})",
            "check.users.addresses[0]: invalid address \"nobody\" (expected local@domain, without <>)",
            "check.x.type: unknown value \"greylist\" (expected one of: \"recipient_list\", \"recipients\", \"senders\", \"spf\", \"dnsbl\", \"milter\")",
            "edge.e2.checks[1]: no check named \"nope\" (define [check.nope] with a type)",
            "edge.e2.checks[3]: \"nope\" is listed twice",
        ],
    ),
    (
        "[process]\nhostname = 42\nlog_format = \"xml\"\nlog_level = \"inf,slimta=debug\"\n[dns]\nnameservers = [\"dns.example:53\"]\nport = 53\n[extra]",
        &[
            "process.hostname: expected a string, found integer",
            "process.log_level: invalid log level \"inf,slimta=debug\": \"inf\" has no level (expected one of: \"trace\", \"debug\", \"info\", \"warn\", \"error\", \"off\")",
            "process.log_format: unknown value \"xml\" (expected one of: \"text\", \"json\")",
            "dns.nameservers[0]: invalid nameserver \"dns.example:53\" (expected IP or IP:PORT, e.g. \"127.0.0.1:5353\")",
            "dns.port: unknown key (expected one of: nameservers)",
            "extra: unknown key (expected one of: check, dns, edge, policy, process, queue, relay)",
        ],
    ),
    (
        "!edge = 1\nqueue = [1]\n[relay]\nout = \"x\"",
        &[
            "edge: expected [edge.NAME] sections, found integer",
            "queue: expected [queue.NAME] sections, found array",
            "relay.out: expected a [relay.out] section, found string",
            "edge: no edge configured: add an [edge.NAME] section so slimta listens somewhere",
        ],
    ),
];

#[test]
fn bad_files_report_every_error_with_its_path() {
    let mut failures = Vec::new();
    for (i, (text, expected)) in BAD.iter().enumerate() {
        let file = match text.strip_prefix('!') {
            Some(whole) => whole.to_owned(),
            None => format!("{MINIMAL}\n{text}\n"),
        };
        let got = errors_of(&file);
        if got != *expected {
            failures.push(format!(
                "case {i}:\n{file}\nexpected:\n  {}\ngot:\n  {}",
                expected.join("\n  "),
                got.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_edge_and_relay_type_is_runnable() {
    let text = format!(
        "{MINIMAL}\n{}",
        r#"
[edge.lmtp]
type = "lmtp"
listen = ["127.0.0.1:0"]
queue = "main"

[relay.smart]
type = "static"
host = "smarthost.example.test"
tls = "required"
credentials = { username = "u", password = "secret" }

[relay.lda]
type = "dovecot"
args = ["-d", "{recipient}"]

[relay.pipe]
type = "pipe"
command = ["/bin/cat"]
per_recipient = true
"#
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.relays["lda"].kind.name, "dovecot");
    let Some(lda) = config.relays["lda"].settings_as::<Agent>() else {
        panic!("{:?}", config.relays["lda"]);
    };
    assert_eq!(lda.path, PathBuf::from("/usr/lib/dovecot/dovecot-lda"));
    assert_eq!(lda.timeout, secs(60));
    let got: Vec<String> = config
        .unsupported()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn passwords_stay_out_of_debug_output() {
    let text = format!(
        "{MINIMAL}\n[relay.pw]\ntype = \"static\"\nhost = \"127.0.0.1\"\ncredentials = {{ username = \"u\", password = \"hunter2\" }}\n"
    );
    let config = parse(&text).unwrap();
    let Some(out) = config.relays["pw"].settings_as::<StaticSmtp>() else {
        panic!("{:?}", config.relays["pw"]);
    };
    assert_eq!(
        out.client.get_credentials(),
        Some(&Credentials::new("u", "hunter2"))
    );
    let shown = format!("{:?}", config.relays["pw"]);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("\"u\""), "{shown}");
}

#[test]
fn port_zero_may_repeat() {
    let text = format!(
        "{MINIMAL}\n[edge.b]\ntype = \"smtp\"\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nqueue = \"main\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.edges["b"].listen.len(), 2);
}

#[test]
fn queue_delay_warning_and_stats_interval() {
    let text = r#"
[edge.in]
type = "smtp"
listen = ["127.0.0.1:2525"]
queue = "main"
[queue.main]
type = "memory"
relay = "out"
delay_warning = "4h"
stats_interval = "0s"
[queue.other]
type = "memory"
relay = "out"
delay_warning = "0s"
stats_interval = "soon"
[relay.out]
type = "blackhole"
"#;
    let errors = crate::parse(text).unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.starts_with("queue.other.delay_warning: ")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|e| e.starts_with("queue.other.stats_interval: ")),
        "{shown:?}"
    );
    let ok = crate::parse(&text.replace("[queue.other]\ntype = \"memory\"\nrelay = \"out\"\ndelay_warning = \"0s\"\nstats_interval = \"soon\"\n", "")).unwrap();
    let q = &ok.queues["main"];
    assert_eq!(q.delay_warning, Some(secs(4 * 3600)));
    assert_eq!(q.stats_interval, None);
}

#[test]
fn relays_take_destination_limits_and_a_small_pool_caps_them() {
    let config = parse(&MINIMAL.replace(
        "[relay.out]\ntype = \"blackhole\"\n",
        r#"[relay.out]
type = "mx"
destination_concurrency = 8
initial_destination_concurrency = 2
domain_concurrency = { "Slow.Test" = 3 }
dead_after = 3
dead_for = "10s"
dead_for_max = "5m"

[relay.small]
type = "static"
host = "127.0.0.1"
pool_size = 4
domain_concurrency = { "x.test" = 9 }

[relay.pipe]
type = "blackhole"
dead_after = 0
"#,
    ))
    .unwrap();
    let out = &config.relays["out"].destinations;
    assert_eq!(out.concurrency, 8);
    assert_eq!(out.initial_concurrency, 2);
    assert_eq!(out.overrides["slow.test"], 3);
    assert_eq!(out.dead_after, 3);
    assert_eq!(out.dead_for, secs(10));
    assert_eq!(out.dead_for_max, secs(300));
    let small = &config.relays["small"].destinations;
    assert_eq!(
        small.concurrency, 4,
        "never more attempts than pooled sessions"
    );
    assert_eq!(small.overrides["x.test"], 4);
    let pipe = &config.relays["pipe"].destinations;
    assert_eq!(
        (pipe.concurrency, pipe.initial_concurrency, pipe.dead_after),
        (20, 5, 0),
        "defaults; no pool to cap them"
    );
    assert_eq!(
        errors_of(&MINIMAL.replace(
            "type = \"blackhole\"\n",
            "type = \"blackhole\"\ndestination_concurrency = 0\ndead_for = \"1h\"\ndead_for_max = \"1m\"\n"
        )),
        [
            "relay.out.destination_concurrency: must be between 1 and 4294967295, found 0",
            "relay.out.dead_for_max: must be at least dead_for (3600s)",
        ]
    );
}
